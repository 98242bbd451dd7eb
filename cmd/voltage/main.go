// Command voltage runs an energy-management node.
//
//	voltage run -c FILE [--simulate]   run a node (--simulate serves the config's
//	                                   loopback Modbus TCP devices in-process)
//	voltage check -c FILE              validate a configuration, exit 1 on errors
//	voltage simulate -c FILE           serve the config's Modbus TCP devices
//	voltage control -c FILE --point 1001:c:1 --value 1
//	                                   send a control command over the HTTP API
//	                                   (token from VOLTAGE_TOKEN), or signed on
//	                                   Redis (--via-redis), print the result
//	voltage audit verify [-c FILE | --dir DATA_DIR]
//	                                   check the chain of the audit file
//	voltage version                    print the version
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/voltage-ems/voltage/config"
	_ "github.com/voltage-ems/voltage/drivers/modbus"  // registers modbus_tcp, modbus_rtu
	_ "github.com/voltage-ems/voltage/drivers/virtual" // registers virtual
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage: voltage <command> [flags]

commands:
  run -c FILE [--simulate]   run a node; --simulate also serves the config's
                             loopback Modbus TCP devices in-process (the demo)
  check -c FILE              validate a configuration and its point tables
  simulate -c FILE           serve the config's Modbus TCP devices (simulator)
  control -c FILE --point CH:TYPE:PT --value V [--id KEY] [--wait 5s] [--timeout 5s]
          [--url URL] [--ca FILE] [--cert FILE --key FILE] [--via-redis [--user NAME]]
                             send a control command through the node's HTTP API
                             (token from $VOLTAGE_TOKEN; https with node.tls, --ca to
                             trust, --cert/--key for mutual TLS), or with --via-redis
                             publish it on the node's Redis, signed with the config's
                             auth.command_key; wait for the result (an unknown outcome:
                             also for its reconciliation) and print it; exit 0 only
                             when the status is success
  audit verify [-c FILE | --dir DATA_DIR]
                             check the tamper-evident audit file (data_dir/audit.log
                             and its rotated files); exit 1 where the chain breaks
  version                    print the version
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	var err error
	switch cmd {
	case "run":
		err = cmdRun(rest, stdout, stderr)
	case "check":
		err = cmdCheck(rest, stdout, stderr)
	case "simulate":
		err = cmdSimulate(rest, stdout, stderr)
	case "control":
		err = cmdControl(rest, stdout, stderr)
	case "audit":
		err = cmdAudit(rest, stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "voltage", version)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "voltage: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "voltage %s: %v\n", cmd, err)
		return 2
	default:
		fmt.Fprintf(stderr, "voltage %s: %v\n", cmd, err)
		return 1
	}
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// commonFlags are the flags every command that reads a config has.
type commonFlags struct {
	config   string
	logLevel string
	level    slog.Level
	fs       *flag.FlagSet
}

func newFlags(name string, stderr io.Writer) *commonFlags {
	f := &commonFlags{fs: flag.NewFlagSet(name, flag.ContinueOnError)}
	f.fs.SetOutput(stderr)
	f.fs.StringVar(&f.config, "c", "", "configuration `file` (YAML)")
	f.fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	return f
}

func (f *commonFlags) parse(args []string) error {
	if err := f.fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if f.fs.NArg() > 0 {
		return usageError{fmt.Sprintf("unexpected argument %q", f.fs.Arg(0))}
	}
	if f.config == "" {
		return usageError{"-c FILE is required"}
	}
	return nil
}

// load parses args, builds the logger and loads the configuration, whose
// problems are all printed to stderr.
func (f *commonFlags) load(args []string, stderr io.Writer) (*slog.Logger, *config.Config, error) {
	if err := f.parse(args); err != nil {
		return nil, nil, err
	}
	log, err := f.logger(stderr)
	if err != nil {
		return nil, nil, err
	}
	cfg, err := config.Load(f.config)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return nil, nil, fmt.Errorf("%s is not valid", f.config)
	}
	return log, cfg, nil
}

func (f *commonFlags) logger(w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(strings.ToUpper(f.logLevel))); err != nil {
		return nil, usageError{fmt.Sprintf("--log-level %q: want debug, info, warn or error", f.logLevel)}
	}
	f.level = lvl
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lvl})), nil
}
