package e2e

import (
	"encoding/json"
	"os"
)

func getenv(k string) string { return os.Getenv(k) }

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }
