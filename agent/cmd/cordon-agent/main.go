// Command cordon-agent is Cordon's agent daemon; see package agent.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/cordon-ir/cordon/agent/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
