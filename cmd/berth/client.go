package main

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/berthhq/berth"
	berthhttp "github.com/berthhq/berth/http"
	"github.com/berthhq/berth/server"
)

// defaultServer is where login goes when neither --server nor BERTH_SERVER
// says otherwise: what `berth serve` listens on by default.
const defaultServer = "http://127.0.0.1:8080"

// addClientCommands adds the CLI commands that talk to a server.
func addClientCommands(root *cobra.Command) {
	root.AddCommand(
		newLoginCmd(),
		newDeployCmd(),
		newLsCmd(),
		newVersionsCmd(),
		newRollbackCmd(),
		newOpsCmd(),
		newLogsCmd(),
		newUsersCmd(),
	)
}

// cliConfig is what login stores: which server, and the token for it.
type cliConfig struct {
	Server    string    `json:"server"`
	Token     string    `json:"token"`
	Username  string    `json:"username,omitempty"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// configPath is $XDG_CONFIG_HOME/berth/config.json, or
// ~/.config/berth/config.json when XDG_CONFIG_HOME is unset.
func configPath() (string, error) {
	if dir := os.Getenv("XDG_CONFIG_HOME"); dir != "" && filepath.IsAbs(dir) {
		return filepath.Join(dir, "berth", "config.json"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("cannot find the config directory: set XDG_CONFIG_HOME or HOME: %w", err)
	}
	return filepath.Join(home, ".config", "berth", "config.json"), nil
}

// loadConfig reads the stored config; a missing file is an empty config.
func loadConfig() (cliConfig, error) {
	var c cliConfig
	path, err := configPath()
	if err != nil {
		return c, err
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("read %s: %w", path, err)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("%s is not valid JSON (delete it and log in again): %w", path, err)
	}
	return c, nil
}

// saveConfig writes c with mode 0600 (it holds a token), replacing the file
// atomically so that a crash never leaves half a config.
func saveConfig(c cliConfig) (string, error) {
	path, err := configPath()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".config-*.json")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return "", err
	}
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	return path, os.Rename(tmp.Name(), path)
}

// tokenExpiry reads the exp claim of a JWT without verifying it: only to
// tell the user their login expired before the server says "invalid".
func tokenExpiry(token string) (time.Time, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp *float64 `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil || claims.Exp == nil {
		return time.Time{}, false
	}
	return time.Unix(int64(*claims.Exp), 0), true
}

// session returns a client for the configured server and token; BERTH_SERVER
// and BERTH_TOKEN override the stored config.
func session() (*berthhttp.Client, error) {
	c, err := loadConfig()
	if err != nil {
		return nil, err
	}
	if v := os.Getenv("BERTH_SERVER"); v != "" {
		c.Server = v
	}
	if v := os.Getenv("BERTH_TOKEN"); v != "" {
		c.Token = v
	}
	if c.Server == "" || c.Token == "" {
		return nil, errors.New("not logged in: run `berth login --server URL --access-key KEY --access-secret SECRET` (or set BERTH_SERVER and BERTH_TOKEN)")
	}
	if exp, ok := tokenExpiry(c.Token); ok && time.Now().After(exp) {
		return nil, berth.Errorf(berth.CodeUnauthorized, "your login to %s expired at %s", c.Server, exp.Local().Format(time.DateTime))
	}
	cl := berthhttp.NewClient(c.Server, c.Token)
	cl.UserAgent = "berth-cli/" + server.Version
	return cl, nil
}

// jsonFlag adds --json to a read command.
func jsonFlag(cmd *cobra.Command) *bool {
	return cmd.Flags().Bool("json", false, "print JSON (stable field names) instead of a table")
}

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// newTable returns a tabwriter for a table on w; call Flush when done.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

// fmtTime formats t for tables, in local time.
func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format(time.DateTime)
}

// oneLine shortens s to its first line and at most n runes, for a table
// cell; --json has the full text.
func oneLine(s string, n int) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i] + " …"
	}
	if r := []rune(s); len(r) > n {
		s = string(r[:n-1]) + "…"
	}
	return s
}

// orDash is s, or "-" when it is empty (an empty cell breaks column
// reading).
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// newLoginCmd is `berth login`.
func newLoginCmd() *cobra.Command {
	var serverURL, key, secret, credsFile string
	cmd := &cobra.Command{
		Use:   "login",
		Short: "Log in to a Berth server and remember the token",
		Long: `Log in to a Berth server with an access key and secret, and store the server
and token in $XDG_CONFIG_HOME/berth/config.json (default ~/.config/berth/config.json,
mode 0600). BERTH_SERVER and BERTH_TOKEN, when set, override the stored values.

--credentials-file reads the key and secret from a JSON file with access_key and
access_secret, such as the admin-credentials.json that "berth serve" writes into
its data directory on first start; it keeps the secret out of your shell history.`,
		Example: `  berth login --credentials-file berth-data/admin-credentials.json
  berth login --server https://berth.example.com --access-key KEY --access-secret SECRET`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if credsFile != "" {
				if key != "" || secret != "" {
					return usagef("use either --credentials-file or --access-key/--access-secret, not both")
				}
				b, err := os.ReadFile(credsFile)
				if err != nil {
					return fmt.Errorf("read credentials: %w", err)
				}
				var c server.AdminCredentials
				if err := json.Unmarshal(b, &c); err != nil || c.AccessKey == "" || c.AccessSecret == "" {
					return fmt.Errorf("%s does not hold access_key and access_secret", credsFile)
				}
				key, secret = c.AccessKey, c.AccessSecret
			}
			if key == "" || secret == "" {
				return usagef("--access-key and --access-secret (or --credentials-file) are required")
			}
			if serverURL == "" {
				serverURL = os.Getenv("BERTH_SERVER")
			}
			if serverURL == "" {
				serverURL = defaultServer
			}
			serverURL = strings.TrimRight(serverURL, "/")
			cl := berthhttp.NewClient(serverURL, "")
			cl.UserAgent = "berth-cli/" + server.Version
			res, err := cl.Login(cmd.Context(), key, secret)
			if err != nil {
				return err
			}
			cfg := cliConfig{Server: serverURL, Token: res.Token, Username: res.Username}
			if exp, ok := tokenExpiry(res.Token); ok {
				cfg.ExpiresAt = exp.UTC()
			}
			path, err := saveConfig(cfg)
			if err != nil {
				return fmt.Errorf("save login: %w", err)
			}
			role := "user"
			if res.IsSuperUser {
				role = "superuser"
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "logged in to %s as %s (%s)\n", serverURL, res.Username, role)
			if !cfg.ExpiresAt.IsZero() {
				fmt.Fprintf(out, "token valid until %s, stored in %s\n", fmtTime(cfg.ExpiresAt), path)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&serverURL, "server", "", "server URL (default $BERTH_SERVER, else "+defaultServer+")")
	f.StringVar(&key, "access-key", "", "access key")
	f.StringVar(&secret, "access-secret", "", "access secret")
	f.StringVar(&credsFile, "credentials-file", "", "JSON file with access_key and access_secret (such as <data-dir>/admin-credentials.json)")
	return cmd
}
