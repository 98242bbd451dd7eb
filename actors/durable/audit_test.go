package durable

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/voltage-ems/voltage/messages"
	"github.com/voltage-ems/voltage/test/testenv"
)

func openAuditT(t *testing.T, path string, o AuditOptions) *AuditLog {
	t.Helper()
	a, err := OpenAudit(path, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	return a
}

func auditEv(i int) *messages.AuditEvent {
	v := float64(i)
	return &messages.AuditEvent{Time: 1764090000000 + int64(i), Event: messages.AuditAccepted, ID: fmt.Sprintf("cmd-%04d", i),
		Point: "1001:c:1", Value: &v, User: "operator1", Source: "api"}
}

func readLinesT(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) == 0 {
		return nil
	}
	if b[len(b)-1] != '\n' {
		t.Fatalf("%s does not end with a newline", path)
	}
	return bytes.Split(b[:len(b)-1], []byte{'\n'})
}

func writeLines(t *testing.T, path string, lines [][]byte) {
	t.Helper()
	if err := os.WriteFile(path, append(bytes.Join(lines, []byte{'\n'}), '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
}

func verifyT(t *testing.T, path string) *AuditReport {
	t.Helper()
	r, err := VerifyAudit(path)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// TestAuditAppendAndVerify: concurrent entries end up as a chain of JSON
// lines, each the event with seq and prev, the first with 64 zeros, in
// fewer fsyncs than entries (group commit).
func TestAuditAppendAndVerify(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", "audit.log")
	reg := prometheus.NewRegistry()
	a := openAuditT(t, path, AuditOptions{Node: "sub-a", Registerer: reg})
	var wg sync.WaitGroup
	for g := 0; g < 20; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				a.Audit(auditEv(g*25 + i))
			}
		}()
	}
	wg.Wait()
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	lines := readLinesT(t, path)
	if len(lines) != 500 {
		t.Fatalf("%d lines, want 500", len(lines))
	}
	prev := zeroHash
	seen := map[string]bool{}
	for i, l := range lines {
		var e struct {
			Seq  uint64 `json:"seq"`
			Prev string `json:"prev"`
			messages.AuditEvent
		}
		if err := json.Unmarshal(l, &e); err != nil {
			t.Fatalf("line %d: %v: %s", i+1, err, l)
		}
		if e.Seq != uint64(i+1) || e.Prev != prev || e.Node != "sub-a" || e.User != "operator1" || e.Value == nil {
			t.Fatalf("line %d: %s (want seq %d, prev %s)", i+1, l, i+1, prev)
		}
		seen[e.ID] = true
		prev = sha(l)
	}
	if len(seen) != 500 {
		t.Fatalf("%d distinct entries", len(seen))
	}
	if !strings.HasPrefix(string(lines[0]), `{"seq":1,"prev":"0000000000000000000000000000000000000000000000000000000000000000","time":`) {
		t.Fatalf("first line %s", lines[0])
	}
	var fsyncs uint64
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "voltage_audit_commit_seconds" {
			fsyncs = mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	if fsyncs == 0 || fsyncs >= 500 {
		t.Fatalf("%d fsyncs for 500 entries: no group commit", fsyncs)
	}
	t.Logf("500 entries from 20 goroutines in %d fsyncs", fsyncs)
	r := verifyT(t, path)
	if !r.OK() || r.Entries != 500 || r.FirstSeq != 1 || r.LastSeq != 500 || r.Head != sha(lines[499]) || len(r.Files) != 1 {
		t.Fatalf("verify: %+v", r)
	}
	// Close flushes; reopening continues the chain.
	a.Audit(auditEv(1000))
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	a = openAuditT(t, path, AuditOptions{})
	a.Audit(auditEv(1001))
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if r := verifyT(t, path); !r.OK() || r.Entries != 502 || r.LastSeq != 502 {
		t.Fatalf("after reopen: %+v", r)
	}
}

// TestAuditRotation: the trail rotates by size, keeps Keep files, and the
// chain continues across them.
func TestAuditRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	a := openAuditT(t, path, AuditOptions{MaxBytes: 4000, Keep: 3})
	for i := 0; i < 200; i++ {
		a.Audit(auditEv(i))
		if i%7 == 0 {
			if err := a.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	files, missing, err := AuditFiles(path)
	if err != nil || len(missing) != 0 {
		t.Fatal(err, missing)
	}
	want := []string{path + ".3", path + ".2", path + ".1", path}
	if strings.Join(files, " ") != strings.Join(want, " ") {
		t.Fatalf("files %v, want %v", files, want)
	}
	if _, err := os.Stat(path + ".4"); err == nil {
		t.Fatal("kept more than 3 rotated files")
	}
	for _, f := range files[:3] {
		if st, _ := os.Stat(f); st.Size() < 4000 {
			t.Fatalf("%s rotated at %d bytes", f, st.Size())
		}
	}
	// The first line of audit.log carries the hash of audit.log.1's last.
	old, cur := readLinesT(t, path+".1"), readLinesT(t, path)
	if !bytes.Contains(cur[0], []byte(`"prev":"`+sha(old[len(old)-1])+`"`)) {
		t.Fatalf("chain not continued across files: %s", cur[0])
	}
	r := verifyT(t, path)
	if !r.OK() || r.LastSeq != 200 || r.Entries != int(r.LastSeq-r.FirstSeq+1) || len(r.Files) != 4 {
		t.Fatalf("verify: %+v", r)
	}
	if len(r.Notes) != 1 || !strings.Contains(r.Notes[0], "audit.log.3:1: the trail starts at seq") {
		t.Fatalf("notes %v", r.Notes)
	}
	// A missing rotated file is a break.
	if err := os.Rename(path+".2", filepath.Join(dir, "elsewhere")); err != nil {
		t.Fatal(err)
	}
	r = verifyT(t, path)
	if r.OK() || r.Breaks[0].String() != "audit.log.2: missing between the rotated files (removed?)" {
		t.Fatalf("breaks %v", r.Breaks)
	}
}

// TestAuditVerifyFindsTampering edits, deletes and reorders lines of a
// rotated trail: verify names the file and line where the chain breaks.
func TestAuditVerifyFindsTampering(t *testing.T) {
	build := func(t *testing.T) string {
		path := filepath.Join(t.TempDir(), "audit.log")
		a := openAuditT(t, path, AuditOptions{MaxBytes: 8000})
		for i := 0; i < 60; i++ {
			a.Audit(auditEv(i))
			if err := a.Flush(); err != nil {
				t.Fatal(err)
			}
		}
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		if r := verifyT(t, path); !r.OK() || r.Entries != 60 {
			t.Fatalf("intact trail: %+v", r)
		}
		return path
	}
	f := func(name string, file string, tamper func(lines [][]byte) [][]byte, want ...string) {
		t.Run(name, func(t *testing.T) {
			path := build(t)
			p := filepath.Join(filepath.Dir(path), file)
			writeLines(t, p, tamper(readLinesT(t, p)))
			r := verifyT(t, path)
			var got []string
			for _, b := range r.Breaks {
				got = append(got, b.String())
			}
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Fatalf("breaks:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
	f("edit a user", "audit.log.1", func(l [][]byte) [][]byte {
		l[9] = bytes.Replace(l[9], []byte(`"user":"operator1"`), []byte(`"user":"operator2"`), 1)
		return l
	}, "audit.log.1:11: prev does not match line 10 (entry edited or removed)")
	f("delete a line", "audit.log.1", func(l [][]byte) [][]byte {
		return append(l[:4:4], l[5:]...)
	}, "audit.log.1:5: prev does not match line 4 (entry edited or removed); seq 6 where 5 was expected (entries removed, added or reordered)")
	f("reorder two lines", "audit.log.1", func(l [][]byte) [][]byte {
		l[2], l[3] = l[3], l[2]
		return l
	},
		"audit.log.1:3: prev does not match line 2 (entry edited or removed); seq 4 where 3 was expected (entries removed, added or reordered)",
		"audit.log.1:4: prev does not match line 3 (entry edited or removed); seq 3 where 5 was expected (entries removed, added or reordered)",
		"audit.log.1:5: prev does not match line 4 (entry edited or removed); seq 5 where 4 was expected (entries removed, added or reordered)")
	last := len(readLinesT(t, build(t)+".1"))
	f("delete the last line of a rotated file", "audit.log.1", func(l [][]byte) [][]byte {
		return l[:len(l)-1]
	}, fmt.Sprintf("audit.log:1: prev does not match audit.log.1:%d (entry edited or removed); seq %d where %d was expected (entries removed, added or reordered)", last-1, last+1, last))
	f("edit the first line of the trail", "audit.log.1", func(l [][]byte) [][]byte {
		l[0] = bytes.Replace(l[0], []byte(`"seq":1,"prev":"0000`), []byte(`"seq":1,"prev":"1111`), 1)
		return l
	}, "audit.log.1:1: first entry of the trail: prev is not 64 zeros", "audit.log.1:2: prev does not match line 1 (entry edited or removed)")
	f("a line that is not an entry", "audit.log", func(l [][]byte) [][]byte {
		l[1] = []byte("hello")
		return l
	}, "audit.log:2: not an audit entry (invalid character 'h' looking for beginning of value)", "audit.log:3: prev does not match line 2 (entry edited or removed)")
}

// TestAuditTornLastLine: a crash mid-write leaves a line without its end;
// the next open cuts it off and records the cut in the chain.
func TestAuditTornLastLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	a := openAuditT(t, path, AuditOptions{})
	for i := 0; i < 10; i++ {
		a.Audit(auditEv(i))
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	intact, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	torn := []byte(`{"seq":11,"prev":"ab12","time":17640900`)
	if err := os.WriteFile(path, append(append([]byte{}, intact...), torn...), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := verifyT(t, path); !r.OK() || len(r.Notes) != 1 || !strings.Contains(r.Notes[0], "audit.log:11: torn last line") {
		t.Fatalf("verify of a torn trail: %+v", r)
	}
	var logs testenv.LogBuffer
	a = openAuditT(t, path, AuditOptions{Node: "sub-a", Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if !strings.Contains(a.Repaired(), "torn last line cut off at open (39 bytes after byte") {
		t.Fatalf("repaired %q", a.Repaired())
	}
	if !strings.Contains(logs.String(), "level=ERROR") {
		t.Fatalf("cut not logged:\n%s", logs.String())
	}
	a.Audit(auditEv(11))
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	lines := readLinesT(t, path)
	if len(lines) != 12 || !bytes.HasPrefix(lines[10], []byte(`{"seq":11,"prev":"`+sha(lines[9])+`","time":`)) ||
		!bytes.Contains(lines[10], []byte(`"event":"repaired","node":"sub-a"`)) || !bytes.Contains(lines[11], []byte(`"seq":12`)) {
		t.Fatalf("lines after repair:\n%s", bytes.Join(lines[9:], []byte{'\n'}))
	}
	var e messages.AuditEvent
	if err := json.Unmarshal(lines[10], &e); err != nil || !strings.Contains(e.Reason, strconv.Quote(string(torn))) {
		t.Fatalf("the cut bytes are not in the repair entry: %q (%v)", e.Reason, err)
	}
	if r := verifyT(t, path); !r.OK() || r.Entries != 12 || len(r.Notes) != 0 {
		t.Fatalf("verify after repair: %+v", r)
	}
}

// TestAuditFullQueueDropsAfterWait: with the writer stalled, Audit waits
// for room up to Wait, then drops the entry, counts and logs it.
func TestAuditFullQueueDropsAfterWait(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	reg := prometheus.NewRegistry()
	var logs testenv.LogBuffer
	a, err := openAudit(path, AuditOptions{Queue: 2, Wait: 100 * time.Millisecond, Registerer: reg, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	// The writer is not started: the queue fills.
	a.Audit(auditEv(1))
	a.Audit(auditEv(2))
	start := time.Now()
	a.Audit(auditEv(3))
	if d := time.Since(start); d < 100*time.Millisecond || d > 2*time.Second {
		t.Fatalf("Audit on a full queue returned after %v, want about 100 ms", d)
	}
	if v := testutil.ToFloat64(a.m.dropped); v != 1 {
		t.Fatalf("dropped %v", v)
	}
	if !strings.Contains(logs.String(), `level=ERROR msg="audit entry dropped"`) || !strings.Contains(logs.String(), "id=cmd-0003") {
		t.Fatalf("drop not logged:\n%s", logs.String())
	}
	go a.run()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	a.Audit(auditEv(4)) // after Close: dropped too
	if v := testutil.ToFloat64(a.m.dropped); v != 2 {
		t.Fatalf("dropped %v after Close", v)
	}
	if r := verifyT(t, path); !r.OK() || r.Entries != 2 {
		t.Fatalf("queued entries not written at Close: %+v", r)
	}
}

// TestAuditDoesNotKeepTheCallersEvent: the caller may reuse the event.
func TestAuditDoesNotKeepTheCallersEvent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	a, err := openAudit(path, AuditOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ev := auditEv(1)
	a.Audit(ev)
	ev.User, *ev.Value = "mallory", 99
	go a.run()
	_ = a.Close()
	if l := readLinesT(t, path); len(l) != 1 || !bytes.Contains(l[0], []byte(`"value":1,"user":"operator1"`)) {
		t.Fatalf("line %s", l)
	}
}
