// Package session holds the live-data side of the WebSocket API: the
// sessions actor (the hub) and one session actor per connection.
//
// The hub receives every point update, local ones through a Feed (the L1
// path: point actors publish to it next to the Redis writer) and other
// nodes' through the Redis subscriber, and keeps an inverted index from
// point key to the sessions whose patterns match it, so an update touches
// only the sessions that want it. A session coalesces what it receives
// (newest value per point) and sends at most one update frame per 100 ms;
// a client that does not keep up is disconnected once its backlog is full.
// The protocol is docs/websocket.md.
package session
