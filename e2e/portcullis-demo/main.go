// Command portcullis-demo runs Portcullis end to end on this machine, as the README's first
// command (e2e/demo) shows it: the local control plane from e2e/cluster, the Helm chart, the
// seed example, the operator under the chart's ServiceAccount, then the edge and the
// transcoder as local processes with the configuration the operator rendered, in front of a
// Jellyfin stand-in. It prints where to go and stops everything on Ctrl-C.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"portcullis.local/e2e/harness"
)

func main() {
	opts := DefaultOptions()
	flag.StringVar(&opts.Namespace, "namespace", opts.Namespace, "namespace of the seed example")
	flag.StringVar(&opts.ChartNamespace, "chart-namespace", opts.ChartNamespace, "namespace of the Helm release")
	flag.StringVar(&opts.Release, "release", opts.Release, "Helm release name")
	flag.StringVar(&opts.Host, "host", opts.Host, "the MediaServer's host (a *.localhost name resolves to this machine)")
	flag.IntVar(&opts.HTTPSPort, "https-port", opts.HTTPSPort, "the edge's HTTPS port")
	flag.IntVar(&opts.HTTPPort, "http-port", opts.HTTPPort, "the edge's plain-HTTP (redirect) port")
	flag.IntVar(&opts.AdminPort, "admin-port", opts.AdminPort, "the edge's admin port (/metrics, /healthz, /bans)")
	flag.IntVar(&opts.MailboxPort, "mailbox-port", opts.MailboxPort, "port of the mailbox page that shows the one-time codes")
	flag.StringVar(&opts.BinDir, "bin-dir", opts.BinDir, "directory with portcullis-operator, -proxy, -transcoder and -ffmpeg")
	flag.StringVar(&opts.StateDir, "state-dir", opts.StateDir, "where rendered files, media and logs are written")
	flag.Parse()

	if err := run(opts); err != nil {
		fmt.Fprintf(os.Stderr, "portcullis-demo: %v\n", err)
		os.Exit(1)
	}
}

func run(opts Options) error {
	cluster, err := harness.Acquire()
	if err != nil {
		return err
	}
	defer func() {
		if err := cluster.Release(); err != nil {
			fmt.Fprintf(os.Stderr, "portcullis-demo: releasing the cluster: %v\n", err)
		}
	}()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	demo, err := Start(ctx, cluster, opts, os.Stderr)
	if demo != nil {
		defer demo.Stop()
	}
	if err != nil {
		return err
	}
	fmt.Print(demo.Banner())
	select {
	case <-ctx.Done():
		fmt.Fprintln(os.Stderr, "\nstopping the demo")
		return nil
	case exited := <-demo.Exited():
		return fmt.Errorf("%s stopped; its log is %s", exited, demo.LogPath(exited))
	}
}
