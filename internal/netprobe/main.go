// Command netprobe is the test and demo stand-in for a host's service and
// for an outside peer: a TCP echo server, a reachability probe, and a held
// connection driven from standard input. It runs inside the network
// namespaces that tests and the demo make, never on the machine's own
// network.
//
//	netprobe serve ADDR...        echo server; prints each received line
//	netprobe probe ADDR [TIMEOUT] exit 0 if ADDR echoes a line back in time
//	netprobe hold ADDR            connect once; for each stdin line, send it and
//	                              print "echo LINE" or "timeout LINE"
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: netprobe serve ADDR... | probe ADDR [TIMEOUT] | hold ADDR")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		serve(os.Args[2:])
	case "probe":
		timeout := time.Second
		if len(os.Args) > 3 {
			d, err := time.ParseDuration(os.Args[3])
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(2)
			}
			timeout = d
		}
		if err := probe(os.Args[2], timeout); err != nil {
			fmt.Printf("unreachable %s: %v\n", os.Args[2], err)
			os.Exit(1)
		}
		fmt.Printf("reachable %s\n", os.Args[2])
	case "hold":
		hold(os.Args[2])
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", os.Args[1])
		os.Exit(2)
	}
}

var outMu sync.Mutex

func say(format string, args ...any) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Printf(format+"\n", args...)
}

func serve(addrs []string) {
	for _, a := range addrs {
		// One socket per family, so that "0.0.0.0:P" and "[::]:P" can both
		// be served (a dual-stack [::] socket would take the IPv4 port).
		network := "tcp4"
		if strings.HasPrefix(a, "[") {
			network = "tcp6"
		}
		ln, err := net.Listen(network, a)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		say("listening %s", ln.Addr())
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					sc := bufio.NewScanner(c)
					for sc.Scan() {
						say("recv from %s: %s", c.RemoteAddr(), sc.Text())
						if _, err := fmt.Fprintln(c, sc.Text()); err != nil {
							return
						}
					}
				}()
			}
		}()
	}
	select {}
}

func probe(addr string, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintln(c, "probe"); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "probe" {
		return fmt.Errorf("unexpected answer %q", line)
	}
	return nil
}

func hold(addr string) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	say("connected %s -> %s", c.LocalAddr(), c.RemoteAddr())
	echoes := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			echoes <- sc.Text()
		}
		close(echoes)
	}()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		line := in.Text()
		c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		if _, err := fmt.Fprintln(c, line); err != nil {
			say("timeout %s (write: %v)", line, err)
			continue
		}
		select {
		case got, ok := <-echoes:
			if !ok {
				say("closed %s", line)
			} else {
				say("echo %s", got)
			}
		case <-time.After(2 * time.Second):
			say("timeout %s", line)
		}
	}
}
