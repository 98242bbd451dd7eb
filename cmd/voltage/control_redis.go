package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/messages"
)

// controlRequest is what `voltage control` was asked to send.
type controlRequest struct {
	key     messages.PointKey
	value   float64
	id      string
	wait    time.Duration
	timeout time.Duration
	user    string
}

// controlViaRedis publishes the command straight on the node's Redis
// (cmd:{ch}:control), signed with auth.command_key when the config has one,
// as an outside client would: it claims cmd:result:{id} like the gateway,
// waits for the result on cmd:{ch}:result and, when the outcome is
// unknown, for the reconciled follow-up.
func controlViaRedis(cfgFile string, req controlRequest, stdout, stderr io.Writer) error {
	cfg, err := config.Load(cfgFile)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return fmt.Errorf("%s is not valid", cfgFile)
	}
	if cfg.Redis.URL == "" {
		return fmt.Errorf("%s: redis.url is empty: the node's embedded Redis is private to it; use the HTTP API (without --via-redis)", cfgFile)
	}
	_, p := cfg.Point(req.key)
	switch {
	case p == nil:
		return fmt.Errorf("unknown point %s in %s", req.key, cfgFile)
	case p.Type != messages.Control && p.Type != messages.Adjustment:
		return fmt.Errorf("point %s is not a c or a point: it cannot be written", req.key)
	}
	ro, err := redisOptions(&cfg.Redis)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(ro)
	defer rdb.Close()
	keys := messages.NewKeys(cfg.Redis.Prefix)
	signer := messages.NewCommandKey(cfg.Auth.CommandKey, cfg.Auth.CommandKeyPrevious)
	if req.id == "" {
		req.id = messages.NewCommandID()
	}
	cmd := &messages.ControlCommand{ID: req.id, ChannelID: req.key.Channel, PointType: req.key.Type, PointID: req.key.Point,
		Value: req.value, Timestamp: time.Now().UnixMilli(), Source: "cli", User: req.user, TimeoutMS: req.timeout.Milliseconds()}
	if err := cmd.Validate(); err != nil {
		return usageError{err.Error()}
	}
	payload, err := signer.Encode(cmd)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), req.wait)
	defer cancel()
	sub := rdb.Subscribe(ctx, keys.ResultChannel(cmd.ChannelID))
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		return fmt.Errorf("redis %s: subscribe %s: %w", ro.Addr, keys.ResultChannel(cmd.ChannelID), err)
	}
	pending, _ := json.Marshal(messages.ResultOf(cmd, messages.StatusPending, "", time.Now()))
	claimed, err := rdb.SetNX(ctx, keys.Result(cmd.ID), pending, messages.CommandTTL).Result()
	if err != nil {
		return fmt.Errorf("redis %s: %w", ro.Addr, err)
	}
	if !claimed {
		orig, _ := rdb.Get(ctx, keys.Result(cmd.ID)).Result()
		return fmt.Errorf("command %s: duplicate: the id was already used (result: %s)", cmd.ID, orig)
	}
	n, err := rdb.Publish(ctx, keys.Control(cmd.ChannelID), payload).Result()
	if err == nil && n == 0 {
		err = fmt.Errorf("no node is running channel %d (nobody subscribes to %s)", cmd.ChannelID, keys.Control(cmd.ChannelID))
	}
	if err != nil {
		dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = rdb.Del(dctx, keys.Result(cmd.ID)).Err()
		dcancel()
		return fmt.Errorf("command %s not sent: %w", cmd.ID, err)
	}
	msgs := sub.Channel()
	var last *messages.CommandResult
	for {
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("command %s: %s: %s (no reconciled result within --wait %s; see GET /api/commands/%s later)",
					cmd.ID, last.Status, last.Error, req.wait, cmd.ID)
			}
			return fmt.Errorf("command %s: no result within --wait %s", cmd.ID, req.wait)
		case m, ok := <-msgs:
			if !ok {
				return errors.New("redis subscription closed")
			}
			var res messages.CommandResult
			if json.Unmarshal([]byte(m.Payload), &res) != nil || res.ID != cmd.ID || !res.Status.Final() {
				continue
			}
			printJSON(stdout, []byte(m.Payload))
			if res.Status == messages.StatusUnknown {
				last = &res
				continue // the reconciled result follows
			}
			if res.Status != messages.StatusSuccess {
				return fmt.Errorf("command %s: %s: %s", res.ID, res.Status, res.Error)
			}
			return nil
		}
	}
}

// printJSON writes a JSON document indented, one per call.
func printJSON(w io.Writer, raw []byte) {
	var out bytes.Buffer
	if json.Indent(&out, raw, "", "  ") == nil {
		out.WriteByte('\n')
		_, _ = out.WriteTo(w)
	}
}

// cliUser is the user a command sent with --via-redis records, unless --user
// says otherwise.
func cliUser() string {
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	return "cli"
}

// followUnknown polls GET /api/commands/{id} until the result of a command
// whose outcome was unknown is reconciled (or deadline), prints it and
// returns its status and error.
func followUnknown(client *http.Client, auth, base, id string, deadline time.Time, stdout io.Writer) (status, errText string, err error) {
	url := base + "/api/commands/" + id
	for {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		if resp, err := client.Do(req); err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			var res messages.CommandResult
			if resp.StatusCode == http.StatusOK && json.Unmarshal(body, &res) == nil && res.Reconciled {
				printJSON(stdout, body)
				return string(res.Status), res.Error, nil
			}
		}
		if time.Now().After(deadline) {
			return "", "", fmt.Errorf("command %s: unknown: the write went out unanswered and was not reconciled within --wait (see GET /api/commands/%s later)", id, id)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
