// Package web serves the node's HTTP API with gin: health and readiness,
// Prometheus metrics, channel status, current point values, and the control
// path (POST /control/:channel_id/:point_id, GET /api/commands/:id). Errors
// are JSON: {"error":{"code":"...","message":"..."}}.
//
// Every route except /health and /ready needs a bearer token from
// auth.tokens (auth.go): viewer to read, operator to control. A command is
// claimed in Redis (SET cmd:result:{id} NX, status pending), then published
// on cmd:{ch}:control for the channel that owns the point; with "wait", the
// answer is the result that channel publishes on cmd:{ch}:result
// (commands.go).
package web
