package main

import (
	"flag"
	"fmt"
	"io"
	"path/filepath"

	"github.com/voltage-ems/voltage/actors/durable"
	"github.com/voltage-ems/voltage/config"
)

// cmdAudit runs the audit subcommands: verify checks the chain of the
// tamper-evident audit file (data_dir/audit.log and its rotated files) and
// exits 1 where it breaks.
func cmdAudit(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "verify" {
		return usageError{"want: voltage audit verify [-c FILE | --dir DATA_DIR]"}
	}
	fs := flag.NewFlagSet("audit verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgFile := fs.String("c", "", "configuration `file` (YAML): verify the trail in its node.data_dir")
	dir := fs.String("dir", "", "the node's `data_dir` (in a cluster: data_dir/{node})")
	if err := fs.Parse(args[1:]); err != nil {
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	switch {
	case *cfgFile == "" && *dir == "":
		return usageError{"-c FILE or --dir DATA_DIR is required"}
	case *cfgFile != "" && *dir != "":
		return usageError{"-c FILE and --dir DATA_DIR exclude each other"}
	case *cfgFile != "":
		cfg, err := config.Load(*cfgFile)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return fmt.Errorf("%s is not valid", *cfgFile)
		}
		*dir = cfg.Node.DataDir
	}
	path := filepath.Join(*dir, "audit.log")
	r, err := durable.VerifyAudit(path)
	if err != nil {
		return err
	}
	for _, n := range r.Notes {
		fmt.Fprintln(stdout, "note: "+n)
	}
	for _, b := range r.Breaks {
		fmt.Fprintln(stdout, b)
	}
	if !r.OK() {
		return fmt.Errorf("the audit trail in %s is broken in %d %s (%d entries in %d %s checked)",
			*dir, len(r.Breaks), plural(len(r.Breaks), "place", "places"), r.Entries, len(r.Files), plural(len(r.Files), "file", "files"))
	}
	fmt.Fprintf(stdout, "ok: %d %s in %d %s\n", r.Entries, plural(r.Entries, "entry", "entries"), len(r.Files), plural(len(r.Files), "file", "files"))
	if r.Entries > 0 {
		fmt.Fprintf(stdout, "last entry: seq %d, sha256 %s (keep it elsewhere: a later verify must pass through it)\n", r.LastSeq, r.Head)
	}
	return nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
