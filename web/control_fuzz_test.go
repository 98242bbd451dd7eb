package web

import (
	"math"
	"testing"

	"github.com/voltage-ems/voltage/messages"
)

// FuzzControlBody: the body parser never panics, and what it accepts is
// complete and within the limits.
func FuzzControlBody(f *testing.F) {
	for _, s := range []string{
		`{"value": 1}`, `{"value": true}`, `{"value": false, "type": "c"}`,
		`{"value": -12.5e3, "type": "adjustment", "id": "k-1", "wait": "2s", "timeout": "5s"}`,
		`{"value": 1e400}`, `{"value": "1"}`, `{"value": null}`, `{"value": [1]}`, `{"value": 1,}`,
		`{"value": 1} x`, `{"value": 1, "x": 2}`, `{"wait": "1h"}`, ``, `null`, `[]`, `{"value": -0}`,
		`{"value": 1, "id": "` + "\u00e9" + `"}`, `{"value":1,"VALUE":2}`, `{"value": 1, "timeout": "-5s"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := parseControlBody(data)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		if math.IsNaN(req.Value) || math.IsInf(req.Value, 0) {
			t.Fatalf("accepted non-finite value from %q", data)
		}
		if req.Wait < 0 || req.Wait > maxWait || req.Timeout < 0 || req.Timeout > messages.MaxCmdTimeout {
			t.Fatalf("accepted wait %v timeout %v from %q", req.Wait, req.Timeout, data)
		}
		if req.ID != "" && messages.ValidCommandID(req.ID) != nil {
			t.Fatalf("accepted id %q", req.ID)
		}
		if req.Type != 0 && !req.Type.Valid() {
			t.Fatalf("accepted type %v", req.Type)
		}
	})
}
