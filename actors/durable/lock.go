package durable

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// LockFile is the name of the lock file LockDataDir takes in a data_dir.
const LockFile = "LOCK"

// DirLock is an exclusive lock on a data_dir, held until Release or the end
// of the process (a killed process loses it too: it is a flock).
type DirLock struct {
	f   *os.File
	dir string
}

// InUseError is LockDataDir's error when another process (or another
// handle of this one) holds the lock.
type InUseError struct {
	Dir string
	PID int // 0: unknown (the holder has not written it yet)
}

func (e *InUseError) Error() string {
	pid := "unknown"
	if e.PID > 0 {
		pid = strconv.Itoa(e.PID)
	}
	return fmt.Sprintf("data_dir %s is in use by another voltage process (pid %s)", e.Dir, pid)
}

// LockDataDir creates dir if needed and takes an exclusive flock on
// dir/LOCK, where it writes this process's pid. When another process holds
// it, the error is an *InUseError that names the directory and that
// process's pid, as the file shows it.
func LockDataDir(dir string) (*DirLock, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("data_dir %s: %w", dir, err)
	}
	path := filepath.Join(dir, LockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("data_dir %s: %w", dir, err)
	}
	if err := flock(f); err != nil {
		b, _ := os.ReadFile(path)
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			return nil, &InUseError{Dir: dir, PID: pid}
		}
		return nil, fmt.Errorf("data_dir %s: lock %s: %w", dir, path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("data_dir %s: write pid to %s: %w", dir, path, err)
	}
	return &DirLock{f: f, dir: dir}, nil
}

func flock(f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// Dir is the locked directory.
func (l *DirLock) Dir() string { return l.dir }

// Release gives the lock up. The file stays (removing it would race with a
// process taking it). Idempotent.
func (l *DirLock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close() // closing the descriptor drops the flock
	l.f = nil
	return err
}
