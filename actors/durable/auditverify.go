package durable

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// AuditBreak is a place where the audit chain breaks.
type AuditBreak struct {
	File    string // base name: audit.log, audit.log.1, ...
	Line    int    // 1-based; 0 for a whole missing file
	Problem string
}

func (b AuditBreak) String() string {
	if b.Line == 0 {
		return b.File + ": " + b.Problem
	}
	return fmt.Sprintf("%s:%d: %s", b.File, b.Line, b.Problem)
}

// AuditReport is what VerifyAudit found.
type AuditReport struct {
	Files    []string // base names, oldest first
	Entries  int      // lines that are audit entries
	FirstSeq uint64
	LastSeq  uint64
	// Head is the hex SHA-256 of the last line: record it elsewhere, and
	// a later verify that does not end at (or pass through) it shows the
	// tail was rewritten.
	Head   string
	Breaks []AuditBreak
	// Notes are facts that are not breaks: the trail starts after older
	// files were rotated away, the last line is torn (a crash; the node
	// cuts it at its next start).
	Notes []string
}

// OK reports whether the chain is whole.
func (r *AuditReport) OK() bool { return len(r.Breaks) == 0 }

// AuditFiles returns the files of the trail at path, oldest first: the
// rotated audit.log.{N} down to audit.log.1, then audit.log; missing holds
// the rotated numbers absent between them.
func AuditFiles(path string) (files []string, missing []int, err error) {
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		return nil, nil, err
	}
	base := filepath.Base(path)
	var nums []int
	hasCurrent := false
	for _, e := range entries {
		name := e.Name()
		if name == base {
			hasCurrent = true
			continue
		}
		suffix, ok := strings.CutPrefix(name, base+".")
		if !ok {
			continue
		}
		if n, err := strconv.Atoi(suffix); err == nil && n > 0 && strconv.Itoa(n) == suffix {
			nums = append(nums, n)
		}
	}
	sort.Sort(sort.Reverse(sort.IntSlice(nums)))
	for i, n := range nums {
		files = append(files, path+"."+strconv.Itoa(n))
		next := 0
		if i+1 < len(nums) {
			next = nums[i+1]
		}
		for m := n - 1; m > next; m-- {
			missing = append(missing, m)
		}
	}
	if hasCurrent {
		files = append(files, path)
	}
	if len(files) == 0 {
		return nil, nil, fmt.Errorf("no audit trail at %s: %w", path, fs.ErrNotExist)
	}
	return files, missing, nil
}

// VerifyAudit checks the audit trail at path (data_dir/audit.log) and its
// rotated files, oldest first: every line must be an entry whose prev is
// the SHA-256 of the line before (64 zeros for the first entry of the
// trail) and whose seq follows the one before. Each break is reported
// where it shows, and the check goes on from the line as it is, so that
// every independent break is found. The error is for files that cannot be
// read.
func VerifyAudit(path string) (*AuditReport, error) {
	files, missing, err := AuditFiles(path)
	if err != nil {
		return nil, err
	}
	r := &AuditReport{}
	for _, n := range missing {
		r.Breaks = append(r.Breaks, AuditBreak{File: filepath.Base(path) + "." + strconv.Itoa(n),
			Problem: "missing between the rotated files (removed?)"})
	}
	v := &verifier{r: r}
	for i, file := range files {
		r.Files = append(r.Files, filepath.Base(file))
		if err := v.file(file, i == len(files)-1); err != nil {
			return nil, err
		}
	}
	return r, nil
}

type verifier struct {
	r        *AuditReport
	prevHash string // of the last line seen ("" before the first)
	prevFile string // where that line is
	prevLine int
	nextSeq  uint64 // 0: unknown
	started  bool
}

func (v *verifier) file(path string, newest bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	name := filepath.Base(path)
	n := 0
	return readLines(f, func(line []byte, complete bool) error {
		n++
		if !complete {
			if newest {
				v.r.Notes = append(v.r.Notes, fmt.Sprintf("%s:%d: torn last line (no newline: a crash mid-write); the node cuts it off at its next start", name, n))
				return nil
			}
			v.brk(name, n, "line without a newline at the end of a rotated file")
		}
		sum := sha256.Sum256(line)
		v.entry(name, n, line)
		v.prevHash, v.prevFile, v.prevLine = hex.EncodeToString(sum[:]), name, n
		return nil
	})
}

func (v *verifier) brk(file string, line int, problem string) {
	v.r.Breaks = append(v.r.Breaks, AuditBreak{File: file, Line: line, Problem: problem})
}

// entry checks one line against the one before.
func (v *verifier) entry(file string, n int, line []byte) {
	var e struct {
		Seq  *uint64 `json:"seq"`
		Prev *string `json:"prev"`
	}
	if err := json.Unmarshal(line, &e); err != nil || e.Seq == nil || e.Prev == nil {
		why := "no seq or prev"
		if err != nil {
			why = err.Error()
		}
		v.brk(file, n, "not an audit entry ("+why+")")
		v.nextSeq = 0
		v.started = true
		return
	}
	seq, prev := *e.Seq, *e.Prev
	var problems []string
	switch {
	case !v.started && seq == 1:
		if prev != zeroHash {
			problems = append(problems, "first entry of the trail: prev is not 64 zeros")
		}
	case !v.started:
		v.r.Notes = append(v.r.Notes, fmt.Sprintf("%s:%d: the trail starts at seq %d (older files rotated away); its prev cannot be checked", file, n, seq))
	case prev != v.prevHash:
		where := "line " + strconv.Itoa(v.prevLine)
		if v.prevFile != file {
			where = v.prevFile + ":" + strconv.Itoa(v.prevLine)
		}
		problems = append(problems, "prev does not match "+where+" (entry edited or removed)")
	}
	if v.started && v.nextSeq != 0 && seq != v.nextSeq {
		problems = append(problems, fmt.Sprintf("seq %d where %d was expected (entries removed, added or reordered)", seq, v.nextSeq))
	}
	if len(problems) > 0 {
		v.brk(file, n, strings.Join(problems, "; "))
	}
	if v.r.Entries == 0 {
		v.r.FirstSeq = seq
	}
	v.r.Entries++
	v.r.LastSeq = seq
	sum := sha256.Sum256(line)
	v.r.Head = hex.EncodeToString(sum[:])
	v.nextSeq = seq + 1
	v.started = true
}

func newLineReader(r io.Reader) *bufio.Reader { return bufio.NewReaderSize(r, 64<<10) }
