package notify

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/test/testenv"
)

// TestUndeliveredKeptForTheNextRun: Stop returns what a down target never
// took, in order (the one in flight first); kept in Redis without the URL
// (it may carry a secret), it comes back for a configured URL only, and a
// new notifier delivers it once the target is up.
func TestUndeliveredKeptForTheNextRun(t *testing.T) {
	r := testenv.StartRedis(t)
	c := redis.NewClient(&redis.Options{Addr: r.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	ctx := context.Background()
	addr := closedAddr(t)
	down := "http://" + addr + "/hook?token=s3cret"
	gone := "http://" + closedAddr(t) + "/old"

	n, m, _ := start(t, Options{})
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("pcs1:%d", i)
		n.Send([]string{down}, id, eventBody(id))
	}
	n.Send([]string{gone}, "old:1", eventBody("old:1"))
	eventually(t, 5*time.Second, "the down target retried", func() bool { return allFailures(m) >= 2 })
	sctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	und := n.Stop(sctx)
	var ids []string
	for _, u := range und {
		ids = append(ids, u.EventID)
	}
	if strings.Join(ids, " ") != "pcs1:1 pcs1:2 pcs1:3 old:1" {
		t.Fatalf("undelivered %v", ids)
	}
	if err := Keep(ctx, c, PendingKey("n1"), und); err != nil {
		t.Fatal(err)
	}
	raw, _ := c.LRange(ctx, PendingKey("n1"), 0, -1).Result()
	if len(raw) != 4 || strings.Contains(strings.Join(raw, ""), "s3cret") {
		t.Fatalf("kept in redis: %v", raw)
	}

	back, dropped, err := TakeKept(ctx, c, PendingKey("n1"), []string{down})
	if err != nil || dropped != 1 || len(back) != 3 || back[0].URL != down || string(back[2].Body) != string(eventBody("pcs1:3")) {
		t.Fatalf("taken back: %+v dropped %d err %v", back, dropped, err)
	}
	if n, _ := c.Exists(ctx, PendingKey("n1")).Result(); n != 0 {
		t.Fatal("the pending list is still there after TakeKept")
	}

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen again on %s: %v", addr, err)
	}
	rc := newReceiver(t, ln, nil)
	n2, _, _ := start(t, Options{})
	for _, u := range back {
		n2.Send([]string{u.URL}, u.EventID, u.Body)
	}
	eventually(t, 5*time.Second, "the kept events delivered", func() bool { return rc.count() == 3 })
	if got := strings.Join(rc.ids(), " "); got != "pcs1:1 pcs1:2 pcs1:3" {
		t.Fatalf("delivered %s", got)
	}
}
