// Command cordon is the Cordon controller daemon and operator tool.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/cordon-ir/cordon/controller/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Execute(ctx)
	stop()
	os.Exit(code)
}
