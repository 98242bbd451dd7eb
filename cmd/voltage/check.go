package main

import (
	"fmt"
	"io"

	"github.com/voltage-ems/voltage/config"
)

// cmdCheck validates a configuration; every problem is printed as
// file:line: field: problem and the exit code is 1 if there is any.
func cmdCheck(args []string, stdout, stderr io.Writer) error {
	f := newFlags("check", stderr)
	clusterFile := f.fs.String("cluster", "", "also check this cluster `file` (cluster.yaml) against the configuration")
	if err := f.parse(args); err != nil {
		return err
	}
	cfg, err := config.Load(f.config)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return fmt.Errorf("%s is not valid", f.config)
	}
	points := 0
	for _, ch := range cfg.Channels {
		points += len(ch.Points)
	}
	fmt.Fprintf(stdout, "%s: ok (node %s, %d channels, %d points, %d computations, %d alarms)\n",
		f.config, cfg.Node.Name, len(cfg.Channels), points, len(cfg.Computations), len(cfg.Alarms))
	if *clusterFile != "" {
		cl, err := config.LoadCluster(*clusterFile, cfg)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return fmt.Errorf("%s is not valid", *clusterFile)
		}
		subs := map[string]bool{}
		for _, n := range cl.Nodes {
			subs[n.Substation] = true
		}
		fmt.Fprintf(stdout, "%s: ok (cluster %s, provider %s, %d nodes in %d substations, %d placed channels, lease_ttl %s)\n",
			*clusterFile, cl.Name, cl.Provider.Kind, len(cl.Nodes), len(subs), len(cl.Channels.Items), cl.LeaseTTL)
	}
	return nil
}
