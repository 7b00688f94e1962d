package cli

import (
	"io"
	"unicode/utf8"

	"github.com/cordon-ir/cordon/pkg/wire"
)

// cleanWriter replaces control characters (escape sequences, bidirectional
// overrides) with '?' on their way to the operator's terminal: much of what
// cordon prints (errors, audit details, names in bundles) comes from hosts
// that may be compromised. Newlines and tabs pass.
type cleanWriter struct{ w io.Writer }

func (c cleanWriter) Write(p []byte) (int, error) {
	out := make([]byte, 0, len(p))
	for i := 0; i < len(p); {
		r, n := utf8.DecodeRune(p[i:])
		if r == utf8.RuneError && n <= 1 {
			out = append(out, p[i])
			i++
			continue
		}
		if r != '\n' && wire.IsControl(r) {
			out = append(out, '?')
		} else {
			out = append(out, p[i:i+n]...)
		}
		i += n
	}
	if _, err := c.w.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}
