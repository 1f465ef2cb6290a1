package instances

import (
	"fmt"
	"os"
	"time"
)

// opLog appends one line per lifecycle action to the instance's hypeman
// log (the API's source=hypeman): time, operation, outcome and duration.
func (m *Manager) opLog(id, op string, started time.Time, err error, detail string) {
	outcome := "ok"
	if err != nil {
		outcome = "failed: " + err.Error()
	}
	line := fmt.Sprintf("%s %s %s (%s)", time.Now().UTC().Format(time.RFC3339Nano), op, outcome,
		time.Since(started).Round(time.Millisecond))
	if detail != "" {
		line += " " + detail
	}
	f, ferr := os.OpenFile(m.paths.InstanceHypemanLog(id), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if ferr != nil {
		return
	}
	defer f.Close()
	_, _ = f.WriteString(line + "\n")
}
