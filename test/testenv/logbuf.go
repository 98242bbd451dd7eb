package testenv

import (
	"bytes"
	"sync"
)

// LogBuffer is a log sink safe for concurrent writes (an slog handler's
// output that a test reads while the code under test keeps logging).
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *LogBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *LogBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
