// Command s3server serves the S3 API from memory (github.com/johannesboyne/gofakes3),
// for tests of S3 destinations: it listens on the given address (127.0.0.1:0 picks a free
// port) and prints "listening on HOST:PORT" once it accepts connections.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

func main() {
	address := flag.String("listen", "127.0.0.1:0", "the address to listen on")
	var buckets bucketList
	flag.Var(&buckets, "bucket", "a bucket to create at start (repeatable)")
	flag.Parse()

	backend := s3mem.New()
	for _, bucket := range buckets {
		if err := backend.CreateBucket(bucket); err != nil {
			log.Fatalf("creating bucket %s: %v", bucket, err)
		}
	}
	faker := gofakes3.New(backend, gofakes3.WithAutoBucket(false))
	listener, err := net.Listen("tcp", *address)
	if err != nil {
		log.Fatalf("listening on %s: %v", *address, err)
	}
	fmt.Printf("listening on %s\n", listener.Addr())
	os.Stdout.Sync()
	log.Fatal(http.Serve(listener, faker.Server()))
}

// bucketList collects the -bucket flags.
type bucketList []string

func (b *bucketList) String() string { return fmt.Sprint(*b) }

func (b *bucketList) Set(value string) error {
	*b = append(*b, value)
	return nil
}
