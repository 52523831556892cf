// Command step-ca is a minimal entry point for smallstep step-ca built from
// Debian's packaged sources (golang-github-smallstep-certificates-dev), which
// ship the libraries but not upstream's cmd/step-ca. It runs the same top
// action as upstream: `step-ca [flags] <config>` (flags before the config path).
//
// Build it with infra/step-ca/build-local.sh (GO111MODULE=off, GOPATH mode).
package main

import (
	"fmt"
	"os"

	"github.com/smallstep/certificates/commands"
	"github.com/urfave/cli"
	"go.step.sm/cli-utils/step"
)

// Version is reported by --version; the packaged sources are 0.19.x.
var Version = "0.19.0-debian-local"

func main() {
	step.Set("Smallstep CA", Version, "unknown")

	app := cli.NewApp()
	app.Name = "step-ca"
	app.HelpName = "step-ca"
	app.Version = step.Version()
	app.Usage = "an online certificate authority for secure automated certificate management"
	app.UsageText = commands.AppCommand.UsageText
	app.Flags = append(app.Flags, commands.AppCommand.Flags...)
	app.Action = commands.AppCommand.Action
	app.Writer = os.Stdout
	app.ErrWriter = os.Stderr

	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
