// A Go program: the runtime's netpoller is an epoll, goroutines run on
// several threads, a time.Ticker drives a counter through a channel into
// a log. Follows the workloads' protocol (wl.h): argv FIFO RESULT, "ready"
// on the FIFO, verifies itself on SIGTERM: the log holds 1..n without gap
// or repeat and every goroutine is still running.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	fifo, result := os.Args[1], os.Args[2]
	logPath := result + ".log"
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		panic(err)
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	ticks := make(chan int, 64)
	go func() {
		t := time.NewTicker(5 * time.Millisecond)
		n := 0
		for range t.C {
			n++
			ticks <- n
		}
	}()
	var spins [4]atomic.Int64
	for i := range spins {
		go func(c *atomic.Int64) {
			for {
				time.Sleep(time.Millisecond)
				c.Add(1)
			}
		}(&spins[i])
	}
	finish := func(fail string) {
		out := "PASS\n"
		if fail != "" {
			out = "FAIL: " + fail + "\n"
		}
		os.WriteFile(result, []byte(out), 0o644)
		if fail != "" {
			os.Exit(1)
		}
		os.Exit(0)
	}
	last := 0
	for {
		select {
		case n := <-ticks:
			if n != last+1 {
				finish(fmt.Sprintf("tick %d after %d", n, last))
			}
			last = n
			fmt.Fprintf(log, "%d\n", n)
			if n == 20 {
				os.WriteFile(fifo, []byte("ready\n"), 0)
			}
		case <-term:
			data, err := os.ReadFile(logPath)
			if err != nil {
				finish(err.Error())
			}
			lines := strings.Fields(string(data))
			for i, l := range lines {
				if v, _ := strconv.Atoi(l); v != i+1 {
					finish(fmt.Sprintf("log line %d is %q", i+1, l))
				}
			}
			if len(lines) != last {
				finish(fmt.Sprintf("%d log lines but the counter is %d", len(lines), last))
			}
			before := [4]int64{}
			for i := range spins {
				before[i] = spins[i].Load()
			}
			time.Sleep(50 * time.Millisecond)
			for i := range spins {
				if spins[i].Load() == before[i] {
					finish(fmt.Sprintf("goroutine %d stopped", i))
				}
			}
			finish("")
		}
	}
}
