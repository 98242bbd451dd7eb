// Package web serves the node's HTTP API with gin: health and readiness,
// Prometheus metrics, channel status and current point values. Errors are
// JSON: {"error":{"code":"...","message":"..."}}.
package web
