package main

import (
	"encoding/json"
	"fmt"
	"html"
	"net"
	"net/http"
	"time"
)

// serveMailbox serves a page listing the newest mails the cluster's Mailpit caught (its
// build here has no web interface), so that the one-time codes can be read in a browser.
func serveMailbox(address, mailpitAPI string) (*http.Server, error) {
	listener, err := net.Listen("tcp", address)
	if err != nil {
		return nil, err
	}
	client := &http.Client{Timeout: 5 * time.Second}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		response, err := client.Get(mailpitAPI + "/api/v1/messages?limit=20")
		if err != nil {
			http.Error(w, "Mailpit: "+err.Error(), http.StatusBadGateway)
			return
		}
		defer response.Body.Close()
		var list struct {
			Messages []struct {
				To []struct {
					Address string
				}
				Subject string
				Created time.Time
				Snippet string
			}
		}
		if err := json.NewDecoder(response.Body).Decode(&list); err != nil {
			http.Error(w, "Mailpit: "+err.Error(), http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Demo mailbox</title>
<meta http-equiv="refresh" content="5"><meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family:sans-serif;max-width:48rem;margin:2rem auto;padding:0 1rem">
<h1>Mails the edge sent</h1><p>Newest first; the page refreshes every 5 seconds.</p>
<table cellpadding="6"><tr><th align="left">when</th><th align="left">to</th><th align="left">subject</th><th align="left">text</th></tr>`)
		for _, message := range list.Messages {
			to := ""
			for _, address := range message.To {
				to += address.Address + " "
			}
			fmt.Fprintf(w, "<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>\n",
				message.Created.Local().Format("15:04:05"), html.EscapeString(to),
				html.EscapeString(message.Subject), html.EscapeString(message.Snippet))
		}
		fmt.Fprint(w, "</table></body></html>\n")
	})
	server := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = server.Serve(listener) }()
	return server, nil
}
