package main

import "github.com/spf13/cobra"

// addClientCommands adds the CLI commands that talk to a server.
func addClientCommands(root *cobra.Command) {}
