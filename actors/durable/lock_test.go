package durable

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/voltage-ems/voltage/test/testenv"
)

func TestLockDataDirTwiceInOneProcess(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	l, err := LockDataDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, LockFile))
	if strings.TrimSpace(string(b)) != fmt.Sprint(os.Getpid()) {
		t.Fatalf("LOCK holds %q, want this pid %d", b, os.Getpid())
	}
	_, err = LockDataDir(dir)
	want := fmt.Sprintf("data_dir %s is in use by another voltage process (pid %d)", dir, os.Getpid())
	var iu *InUseError
	if !errors.As(err, &iu) || err.Error() != want {
		t.Fatalf("second lock: %v, want %q", err, want)
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(); err != nil { // idempotent
		t.Fatal(err)
	}
	l2, err := LockDataDir(dir)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	_ = l2.Release()
}

// TestLockDataDirHelperProcess is the other process of
// TestLockDataDirAcrossProcesses (the test binary run again).
func TestLockDataDirHelperProcess(t *testing.T) {
	dir := os.Getenv("VOLTAGE_LOCK_HELPER_DIR")
	if dir == "" {
		t.Skip("helper process of TestLockDataDirAcrossProcesses")
	}
	if _, err := LockDataDir(dir); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("locked")
	time.Sleep(time.Minute) // until killed
	os.Exit(0)
}

// TestLockDataDirAcrossProcesses: a second process is told which pid holds
// the data_dir, and the lock goes with its holder even on kill -9.
func TestLockDataDirAcrossProcesses(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	cmd := exec.Command(os.Args[0], "-test.run=^TestLockDataDirHelperProcess$")
	cmd.Env = append(os.Environ(), "VOLTAGE_LOCK_HELPER_DIR="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "locked\n" {
		t.Fatalf("helper said %q (%v)", line, err)
	}
	_, err = LockDataDir(dir)
	var iu *InUseError
	if !errors.As(err, &iu) || iu.PID != cmd.Process.Pid ||
		err.Error() != fmt.Sprintf("data_dir %s is in use by another voltage process (pid %d)", dir, cmd.Process.Pid) {
		t.Fatalf("lock held by pid %d: got %v", cmd.Process.Pid, err)
	}
	if err := cmd.Process.Kill(); err != nil { // SIGKILL: no cleanup in the holder
		t.Fatal(err)
	}
	_ = cmd.Wait()
	var l *DirLock
	testenv.Eventually(t, 5*time.Second, func() bool { l, err = LockDataDir(dir); return err == nil }, "lock free after kill -9: %v", err)
	_ = l.Release()
}
