// Package redisbus holds the Redis side of the bus: the writer that stores
// point state in the comsrv hashes and publishes point:update, and the
// subscriber that delivers other nodes' updates to local consumers.
//
// Writer is a plain concurrent component: point actors hand it updates
// with Publish (a mutex-guarded append, no allocation) and its flush loop
// pipelines them to Redis at the latest every 20 ms or every 1000 queued
// updates. WriterActor places it in the actor tree (start on Started, final
// flush on Stopping).
//
// Outages: when a flush fails the writer switches to coalescing: it keeps
// only the newest state of each point (bounded by the number of points),
// retries with backoff, and on recovery rewrites every point's hashes (Redis
// may have restarted empty) and publishes the newest value of each point
// that changed meanwhile. A new connection opened by the client (a
// reconnect that go-redis hid behind its retries) triggers the same full
// rewrite, so no point is left older than the device's value.
package redisbus
