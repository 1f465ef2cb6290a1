package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"sync/atomic"
	"time"
)

// monitor is one QMP session. QEMU's QMP socket serves one client at a
// time, so sessions are short: dial, run commands, close.
type monitor struct {
	conn net.Conn
	r    *bufio.Reader
	id   atomic.Uint64
}

type qmpError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *qmpError       `json:"error"`
	Event  string          `json:"event"`
	ID     uint64          `json:"id"`
	QMP    json.RawMessage `json:"QMP"`
}

// dialMonitor connects to the QMP socket at path and negotiates capabilities.
func dialMonitor(ctx context.Context, path string) (*monitor, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: dial %s: %w", path, err)
	}
	m := &monitor{conn: conn, r: bufio.NewReader(conn)}
	if err := m.greet(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return m, nil
}

func (m *monitor) greet(ctx context.Context) error {
	m.setDeadline(ctx)
	var hello qmpReply
	if err := m.read(&hello); err != nil {
		return fmt.Errorf("qmp: greeting: %w", err)
	}
	if hello.QMP == nil {
		return fmt.Errorf("qmp: unexpected greeting")
	}
	return m.execute(ctx, "qmp_capabilities", nil, nil)
}

func (m *monitor) Close() error { return m.conn.Close() }

func (m *monitor) setDeadline(ctx context.Context) {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(30 * time.Second)
	}
	_ = m.conn.SetDeadline(dl)
}

func (m *monitor) read(v *qmpReply) error {
	line, err := m.r.ReadBytes('\n')
	if err != nil {
		return err
	}
	return json.Unmarshal(line, v)
}

// execute runs one command and decodes its return value into out (if not
// nil). Asynchronous events received meanwhile are skipped.
func (m *monitor) execute(ctx context.Context, cmd string, args, out any) error {
	m.setDeadline(ctx)
	id := m.id.Add(1)
	req := map[string]any{"execute": cmd, "id": id}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if _, err := m.conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("qmp: %s: %w", cmd, err)
	}
	return m.awaitReply(ctx, cmd, id, out)
}

// awaitReply reads until the reply to request id, skipping events.
func (m *monitor) awaitReply(ctx context.Context, cmd string, id uint64, out any) error {
	for {
		var rep qmpReply
		if err := m.read(&rep); err != nil {
			return fmt.Errorf("qmp: %s: %w", cmd, err)
		}
		if rep.Event != "" || rep.ID != id {
			continue
		}
		if rep.Error != nil {
			return fmt.Errorf("qmp: %s: %s: %s", cmd, rep.Error.Class, rep.Error.Desc)
		}
		if out != nil && rep.Return != nil {
			return json.Unmarshal(rep.Return, out)
		}
		return nil
	}
}

// Typed commands.

type statusInfo struct {
	Status  string `json:"status"`
	Running bool   `json:"running"`
}

func (m *monitor) queryStatus(ctx context.Context) (statusInfo, error) {
	var s statusInfo
	err := m.execute(ctx, "query-status", nil, &s)
	return s, err
}

type keyValue struct {
	Type string `json:"type"`
	Data string `json:"data"`
}

func (m *monitor) sendCtrlAltDel(ctx context.Context) error {
	keys := []keyValue{{"qcode", "ctrl"}, {"qcode", "alt"}, {"qcode", "delete"}}
	return m.execute(ctx, "send-key", map[string]any{"keys": keys}, nil)
}

func (m *monitor) quit(ctx context.Context) error {
	return m.execute(ctx, "quit", nil, nil)
}
