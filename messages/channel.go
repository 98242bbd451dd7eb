package messages

import "time"

// GetChannelStatus asks a channel actor for its ChannelStatus.
type GetChannelStatus struct{ ChannelID uint32 }

// ChannelStatus is a channel's connection and polling state.
type ChannelStatus struct {
	ID          uint32        `json:"id"`
	Name        string        `json:"name"`
	Protocol    string        `json:"protocol"`
	Connected   bool          `json:"connected"`
	LastPoll    time.Time     `json:"last_poll"`
	LastLatency time.Duration `json:"last_poll_latency_ns"`
	Polls       uint64        `json:"polls"`
	Errors      uint64        `json:"errors"`
	LastError   string        `json:"last_error"`
	Reconnects  uint64        `json:"reconnects"`
	Restarts    int           `json:"restarts"`
	Points      int           `json:"points"`
	BadPoints   int           `json:"bad_points"`
	// Node is the node that runs the channel (in a cluster), Running
	// whether it runs there.
	Node    string `json:"node,omitempty"`
	Running bool   `json:"running"`
}
