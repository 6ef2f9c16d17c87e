// A ContainerPub function in Go (standard library only): serves HTTP/1.1 on
// $PORT and answers every call with handle. The platform only runs the
// binary built by `go build -o {{name}} .`.
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
)

// handle is your function.
func handle(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("name")
	if name == "" {
		name = "world"
	}
	w.Header().Set("content-type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "hello %s from {{name}} (go)\n", name)
}

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	log.Fatal(http.ListenAndServe("0.0.0.0:"+port, http.HandlerFunc(handle)))
}
