package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/redis/go-redis/v9"

	"github.com/voltage-ems/voltage/config"
	"github.com/voltage-ems/voltage/drivers/modbus"
	"github.com/voltage-ems/voltage/messages"
)

// Limits of POST /control.
const (
	maxControlBody = 4 << 10
	maxWait        = 30 * time.Second
	// redisTimeout bounds each Redis round trip of a request.
	redisTimeout = 2 * time.Second
)

// controlRequest is a decoded, syntactically valid control body.
type controlRequest struct {
	Value   float64
	Type    messages.PointType // 0: not given
	ID      string             // "": generate one
	Wait    time.Duration      // 0: answer 202 at once
	Timeout time.Duration      // 0: messages.DefaultCmdTimeout
}

// controlBody is the JSON of POST /control/:channel_id/:point_id.
type controlBody struct {
	Value   json.RawMessage `json:"value"`
	Type    *string         `json:"type"`
	ID      *string         `json:"id"`
	Wait    *string         `json:"wait"`
	Timeout *string         `json:"timeout"`
}

// parseControlBody decodes a control body strictly: one JSON object, known
// fields only, exactly cased and each at most once (strictjson.go), value a
// finite number or true/false.
func parseControlBody(data []byte) (controlRequest, error) {
	var req controlRequest
	if len(bytes.TrimSpace(data)) == 0 {
		return req, errors.New(`empty body: want a JSON object such as {"value": 1}`)
	}
	var b controlBody
	if err := decodeStrict(data, &b); err != nil {
		return req, err
	}
	v, err := parseValue(b.Value)
	if err != nil {
		return req, err
	}
	req.Value = v
	if b.Type != nil {
		t, err := messages.ParsePointType(*b.Type)
		if err != nil {
			return req, fmt.Errorf("type: %v", err)
		}
		req.Type = t
	}
	if b.ID != nil {
		if err := messages.ValidCommandID(*b.ID); err != nil {
			return req, err
		}
		req.ID = *b.ID
	}
	if b.Wait != nil {
		if req.Wait, err = parseDuration("wait", *b.Wait, maxWait); err != nil {
			return req, err
		}
	}
	if b.Timeout != nil {
		if req.Timeout, err = parseDuration("timeout", *b.Timeout, messages.MaxCmdTimeout); err != nil {
			return req, err
		}
		if req.Timeout < messages.MinCmdTimeout {
			// A command's timeout travels in whole milliseconds: less than
			// one would be 0, which means the default 5 s.
			return req, fmt.Errorf("timeout: %s is under the minimum %s", *b.Timeout, messages.MinCmdTimeout)
		}
	}
	return req, nil
}

// jsonErrorText makes encoding/json's errors read well in an API answer.
func jsonErrorText(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return fmt.Sprintf("field %q: cannot use a JSON %s here", te.Field, te.Value)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return "unexpected end of input"
	}
	return err.Error()
}

// parseValue accepts a JSON number (finite) or true/false (1/0).
func parseValue(raw json.RawMessage) (float64, error) {
	raw = bytes.TrimSpace(raw)
	switch {
	case len(raw) == 0:
		return 0, errors.New(`value is required: a number, or true/false for bool points`)
	case string(raw) == "true":
		return 1, nil
	case string(raw) == "false":
		return 0, nil
	case raw[0] == '-' || raw[0] >= '0' && raw[0] <= '9':
		v, err := strconv.ParseFloat(string(raw), 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
			return 0, fmt.Errorf("value %s is not a finite number", raw)
		}
		return v, nil
	}
	kind := "string"
	switch raw[0] {
	case 'n':
		kind = "null"
	case '{':
		kind = "object"
	case '[':
		kind = "array"
	}
	return 0, fmt.Errorf("value must be a number (or true/false), not a JSON %s", kind)
}

func parseDuration(field, s string, max time.Duration) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not a duration (want e.g. \"2s\", \"500ms\")", field, s)
	}
	if d <= 0 || d > max {
		return 0, fmt.Errorf("%s: %s outside the allowed range (0, %s]", field, s, max)
	}
	return d, nil
}

// newCommandID returns a random (version 4) UUID.
func newCommandID() string { return messages.NewCommandID() }

// httpError is an answer other than success.
type httpError struct {
	status int
	code   string
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func badRequest(code, format string, args ...any) *httpError {
	return &httpError{status: http.StatusBadRequest, code: code, msg: fmt.Sprintf(format, args...)}
}

// typeNames are the point types in messages.
var typeNames = map[messages.PointType]string{
	messages.Measurement: "a measurement", messages.Signal: "a signal",
	messages.Control: "a control point", messages.Adjustment: "an adjustment point",
}

// resolvePoint finds the writable point a command addresses: the given type,
// or the c point with that id, else the a point.
func (s *server) resolvePoint(chID, ptID uint32, t messages.PointType) (*config.Channel, *config.Point, *httpError) {
	ch := s.d.Config.Channel(chID)
	if ch == nil {
		return nil, nil, &httpError{http.StatusNotFound, "not_found", fmt.Sprintf("unknown channel %d", chID)}
	}
	notWritable := func(k messages.PointKey) *httpError {
		return badRequest("not_writable", "point %s is %s: only c (control) and a (adjustment) points accept commands", k, typeNames[k.Type])
	}
	key := func(t messages.PointType) messages.PointKey {
		return messages.PointKey{Channel: chID, Type: t, Point: ptID}
	}
	if t != 0 {
		if t == messages.Measurement || t == messages.Signal {
			return nil, nil, notWritable(key(t))
		}
		_, p := s.d.Config.Point(key(t))
		if p == nil {
			return nil, nil, &httpError{http.StatusNotFound, "not_found", "unknown point " + key(t).String()}
		}
		return ch, p, nil
	}
	_, c := s.d.Config.Point(key(messages.Control))
	_, a := s.d.Config.Point(key(messages.Adjustment))
	switch {
	case c != nil && a != nil:
		return nil, nil, badRequest("bad_request", "channel %d has both %s and %s: give \"type\": \"c\" or \"a\"", chID, key(messages.Control), key(messages.Adjustment))
	case c != nil:
		return ch, c, nil
	case a != nil:
		return ch, a, nil
	}
	for _, t := range []messages.PointType{messages.Measurement, messages.Signal} {
		if _, p := s.d.Config.Point(key(t)); p != nil {
			return nil, nil, notWritable(key(t))
		}
	}
	return nil, nil, &httpError{http.StatusNotFound, "not_found", fmt.Sprintf("unknown point: channel %d has no c or a point %d", chID, ptID)}
}

// isBoolPoint reports whether the point takes only 0 and 1: data type bool,
// or a c point of a virtual channel (which has no data type).
func isBoolPoint(ch *config.Channel, p *config.Point) bool {
	return p.DataType == config.Bool || (ch.Protocol == config.ProtocolVirtual && p.DataType == "" && p.Type == messages.Control)
}

// checkValue validates v against the point: bool, min/max, and for Modbus
// the data type after inverse scaling.
func checkValue(ch *config.Channel, p *config.Point, v float64) *httpError {
	k := p.Key(ch.ID)
	name := k.String()
	if p.Name != "" {
		name += " (" + p.Name + ")"
	}
	if isBoolPoint(ch, p) && v != 0 && v != 1 {
		return badRequest("out_of_range", "point %s is a bool: value must be 0 or 1 (false or true), not %s", name, fmtNum(v))
	}
	if (p.Min != nil && v < *p.Min) || (p.Max != nil && v > *p.Max) {
		return badRequest("out_of_range", "value %s outside the range of point %s: min %s, max %s", fmtNum(v), name, fmtBound(p.Min), fmtBound(p.Max))
	}
	switch ch.Protocol {
	case config.ProtocolModbusTCP, config.ProtocolModbusRTU:
		codec, err := modbus.NewCodec(p)
		if err != nil {
			return &httpError{http.StatusInternalServerError, "internal", fmt.Sprintf("point %s cannot be encoded: %v", name, err)}
		}
		if _, err := codec.Raw(v); err != nil {
			return badRequest("out_of_range", "value %s does not fit point %s (%s, scale %s, offset %s): %v", fmtNum(v), name, p.DataType, fmtNum(scaleOf(p)), fmtNum(p.Offset), err)
		}
	case config.ProtocolCompute:
		return badRequest("not_writable", "point %s belongs to compute channel %d: computed points are not written", name, ch.ID)
	}
	return nil
}

func scaleOf(p *config.Point) float64 {
	if p.Scale == 0 {
		return 1
	}
	return p.Scale
}

func fmtNum(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

func fmtBound(b *float64) string {
	if b == nil {
		return "none"
	}
	return fmtNum(*b)
}

// parseIDs reads the channel and point ids of the path.
func parseIDs(c *gin.Context) (ch, pt uint32, herr *httpError) {
	chID, err := strconv.ParseUint(c.Param("channel_id"), 10, 32)
	if err != nil {
		return 0, 0, badRequest("bad_request", "channel id %q is not a number", c.Param("channel_id"))
	}
	ptID, err := strconv.ParseUint(c.Param("point_id"), 10, 32)
	if err != nil {
		return 0, 0, badRequest("bad_request", "point id %q is not a number", c.Param("point_id"))
	}
	return uint32(chID), uint32(ptID), nil
}

// control answers POST /control/:channel_id/:point_id: validate, claim the
// id (SET cmd:result:{id} NX), publish on cmd:{ch}:control, then answer 202
// or, with wait, the result.
func (s *server) control(c *gin.Context) {
	cmd, req, herr := s.acceptControl(c)
	if herr != nil {
		abort(c, herr.status, herr.code, herr.msg)
		return
	}
	ctx := c.Request.Context()

	pending, _ := json.Marshal(messages.ResultOf(cmd, messages.StatusPending, "", time.Now()))
	rctx, cancel := context.WithTimeout(ctx, redisTimeout)
	claimed, err := s.d.Redis.SetNX(rctx, s.d.Keys.Result(cmd.ID), pending, messages.CommandTTL).Result()
	cancel()
	if err != nil {
		abort(c, http.StatusServiceUnavailable, "redis_unavailable", "redis: "+err.Error())
		return
	}
	if !claimed {
		s.duplicate(c, cmd.ID)
		return
	}

	var w *waiter
	if req.Wait > 0 {
		w = s.results.register(cmd.ID)
		defer w.release()
		// The answer may come after node.http_write_timeout: give it the
		// wait on top (the ResponseController reaches net/http's writer
		// through gin's Unwrap; it fails only under an unusual server).
		d := max(req.Wait+10*time.Second, s.d.Config.Node.HTTPWriteTimeout)
		_ = http.NewResponseController(c.Writer).SetWriteDeadline(time.Now().Add(d))
	}
	payload, err := s.d.CommandKey.Encode(cmd)
	if err != nil {
		abort(c, http.StatusInternalServerError, "internal", "encoding command "+cmd.ID+": "+err.Error())
		return
	}
	rctx, cancel = context.WithTimeout(ctx, redisTimeout)
	n, err := s.d.Redis.Publish(rctx, s.d.Keys.Control(cmd.ChannelID), payload).Result()
	cancel()
	if err != nil || n == 0 {
		// Nothing is queued: drop the claim so the id can be sent again.
		dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), redisTimeout)
		if derr := s.d.Redis.Del(dctx, s.d.Keys.Result(cmd.ID)).Err(); derr != nil {
			s.d.Log.Warn("command not published; removing its pending result failed", "command", cmd.ID, "err", derr)
		}
		dcancel()
		if err != nil {
			abort(c, http.StatusServiceUnavailable, "redis_unavailable", "publishing command "+cmd.ID+": "+err.Error())
		} else {
			abort(c, http.StatusServiceUnavailable, "channel_offline", fmt.Sprintf("no node is running channel %d", cmd.ChannelID))
		}
		return
	}
	if w == nil {
		c.JSON(http.StatusAccepted, gin.H{"id": cmd.ID, "status": messages.StatusPending})
		return
	}
	if r, ok := w.wait(ctx, req.Wait); ok {
		c.Data(http.StatusOK, "application/json; charset=utf-8", r.raw)
		return
	}
	abort(c, http.StatusGatewayTimeout, "timeout",
		fmt.Sprintf("no result for command %s within %s; GET /api/commands/%s later", cmd.ID, req.Wait, cmd.ID))
}

// acceptControl validates a control request and builds its command;
// nothing is written to Redis.
func (s *server) acceptControl(c *gin.Context) (*messages.ControlCommand, controlRequest, *httpError) {
	var req controlRequest
	chID, ptID, herr := parseIDs(c)
	if herr != nil {
		return nil, req, herr
	}
	body, err := io.ReadAll(http.MaxBytesReader(c.Writer, c.Request.Body, maxControlBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, req, &httpError{http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("body larger than %d bytes", maxControlBody)}
		}
		return nil, req, badRequest("bad_request", "reading body: %v", err)
	}
	if req, err = parseControlBody(body); err != nil {
		return nil, req, badRequest("bad_request", "%v", err)
	}
	note := auditNote(c) // for the audit, should it be refused from here on
	note.id, note.value = req.ID, &req.Value
	ch, p, herr := s.resolvePoint(chID, ptID, req.Type)
	if herr != nil {
		return nil, req, herr
	}
	note.point = p.Key(ch.ID).String()
	if herr := checkValue(ch, p, req.Value); herr != nil {
		return nil, req, herr
	}
	id := req.ID
	if id == "" {
		id = newCommandID()
	}
	timeout := req.Timeout
	if timeout == 0 {
		timeout = messages.DefaultCmdTimeout
	}
	cmd := &messages.ControlCommand{
		ID: id, ChannelID: ch.ID, PointType: p.Type, PointID: p.ID, Value: req.Value,
		Timestamp: time.Now().UnixMilli(), Source: "api", User: principalOf(c).name,
		TimeoutMS: timeout.Milliseconds(), // whole ms, never rounded up (a command is never written late)
	}
	if err := cmd.Validate(); err != nil {
		return nil, req, badRequest("bad_request", "%v", err)
	}
	return cmd, req, nil
}

// duplicate answers a command id that was already accepted.
func (s *server) duplicate(c *gin.Context, id string) {
	ctx, cancel := context.WithTimeout(c.Request.Context(), redisTimeout)
	defer cancel()
	raw, err := s.d.Redis.Get(ctx, s.d.Keys.Result(id)).Bytes()
	var original json.RawMessage
	switch {
	case err == nil && json.Valid(raw):
		original = raw
	case err == nil || errors.Is(err, redis.Nil):
		original = json.RawMessage("null") // expired or removed meanwhile
	default:
		abort(c, http.StatusServiceUnavailable, "redis_unavailable", "reading command "+id+" from redis: "+err.Error())
		return
	}
	c.JSON(http.StatusOK, gin.H{"id": id, "status": messages.StatusDuplicate, "original": original})
}
