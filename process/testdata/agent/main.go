// Command agent is a tiny stand-in agent for the process runtime's tests. It
// deliberately depends on nothing from Berth.
//
// It listens on 127.0.0.1:$PORT and serves:
//
//	/.well-known/agent.json, /healthz  200 (503 if AGENT_UNHEALTHY is set)
//	/whoami                            {"version":$BERTH_AGENT_VERSION,"port":$PORT,"pid":…,"cwd":…}
//	/env                               its environment as a JSON object
//	/print?n=N                         prints N numbered lines to stdout
//	/crash                             answers, then exits with status 7
//
// Knobs (environment): AGENT_EXIT_AT_START=code prints a line to stdout and
// to stderr and exits at once with that code; AGENT_FAIL_IF_EXISTS=path does
// the same with code 1 if path exists; AGENT_EXIT_AFTER=duration exits with
// status 1 after that long; AGENT_NO_LISTEN=1 never listens;
// AGENT_UNHEALTHY=1 listens but fails its health checks; AGENT_IGNORE_TERM=1
// ignores SIGTERM; AGENT_PORT_GATE=dir, before listening, writes its port to
// dir/port and waits until dir/go-$PORT exists (and removes it), so that a
// test can take the port first.
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	version, port := os.Getenv("BERTH_AGENT_VERSION"), os.Getenv("PORT")
	fmt.Printf("agent starting version=%s port=%s pid=%d\n", version, port, os.Getpid())
	fmt.Fprintf(os.Stderr, "agent stderr hello version=%s\n", version)

	if code := os.Getenv("AGENT_EXIT_AT_START"); code != "" {
		n, _ := strconv.Atoi(code)
		fmt.Println("agent failing at start: boom")
		os.Exit(n)
	}
	if p := os.Getenv("AGENT_FAIL_IF_EXISTS"); p != "" {
		if _, err := os.Stat(p); err == nil {
			fmt.Println("agent failing: marker file exists")
			os.Exit(1)
		}
	}
	if os.Getenv("AGENT_IGNORE_TERM") != "" {
		signal.Ignore(syscall.SIGTERM)
	}
	if d := os.Getenv("AGENT_EXIT_AFTER"); d != "" {
		dur, err := time.ParseDuration(d)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bad AGENT_EXIT_AFTER:", err)
			os.Exit(2)
		}
		time.AfterFunc(dur, func() {
			fmt.Println("agent exiting as asked")
			os.Exit(1)
		})
	}
	if dir := os.Getenv("AGENT_PORT_GATE"); dir != "" {
		if err := os.WriteFile(dir+"/port.tmp", []byte(port), 0o600); err != nil {
			fmt.Fprintln(os.Stderr, "port gate:", err)
			os.Exit(2)
		}
		if err := os.Rename(dir+"/port.tmp", dir+"/port"); err != nil {
			fmt.Fprintln(os.Stderr, "port gate:", err)
			os.Exit(2)
		}
		for {
			if err := os.Remove(dir + "/go-" + port); err == nil {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if os.Getenv("AGENT_NO_LISTEN") != "" {
		select {}
	}

	unhealthy := os.Getenv("AGENT_UNHEALTHY") != ""
	health := func(w http.ResponseWriter, r *http.Request) {
		if unhealthy {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"name":"test-agent","version":%q}`, version)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/agent.json", health)
	mux.HandleFunc("/healthz", health)
	mux.HandleFunc("/whoami", func(w http.ResponseWriter, r *http.Request) {
		cwd, _ := os.Getwd()
		json.NewEncoder(w).Encode(map[string]any{"version": version, "port": port, "pid": os.Getpid(), "cwd": cwd})
	})
	mux.HandleFunc("/env", func(w http.ResponseWriter, r *http.Request) {
		env := map[string]string{}
		for _, kv := range os.Environ() {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
		json.NewEncoder(w).Encode(env)
	})
	mux.HandleFunc("/print", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		for i := range n {
			fmt.Printf("print line %06d %s\n", i, strings.Repeat("x", 40))
		}
		fmt.Fprintln(w, "printed", n)
	})
	mux.HandleFunc("/crash", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "crashing")
		w.(http.Flusher).Flush()
		fmt.Println("agent crashing on request")
		go func() {
			time.Sleep(10 * time.Millisecond)
			os.Exit(7)
		}()
	})
	if err := http.ListenAndServe("127.0.0.1:"+port, mux); err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(3)
	}
}
