// A minimal Envoy external authorization server (envoy.service.auth.v3, gRPC), built on
// the official go-control-plane types and grpc-go, for Sluice's ExternalAuth tests
// (protocol: GRPC). Test tooling only.
//
// Usage: extauthz 127.0.0.1:0 — prints "listening ADDR", then one JSON line per
// CheckRequest it receives (protojson). "authorization: Bearer good" is allowed with
// `x-user: ann` set, `x-tag: b` appended and `x-drop` removed; anything else is denied
// with 401, `www-authenticate: Bearer` and the body "sign in first\n".
package main

import (
	"context"
	"fmt"
	"net"
	"os"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	auth "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

type server struct {
	auth.UnimplementedAuthorizationServer
}

func header(k, v string, appendIt bool) *core.HeaderValueOption {
	return &core.HeaderValueOption{
		Header: &core.HeaderValue{Key: k, Value: v},
		Append: wrapperspb.Bool(appendIt),
	}
}

func (server) Check(_ context.Context, req *auth.CheckRequest) (*auth.CheckResponse, error) {
	line, err := protojson.Marshal(req)
	if err != nil {
		return nil, err
	}
	fmt.Println(string(line))
	if req.GetAttributes().GetRequest().GetHttp().GetHeaders()["authorization"] == "Bearer good" {
		return &auth.CheckResponse{
			Status: &rpcstatus.Status{Code: int32(codes.OK)},
			HttpResponse: &auth.CheckResponse_OkResponse{OkResponse: &auth.OkHttpResponse{
				Headers:         []*core.HeaderValueOption{header("x-user", "ann", false), header("x-tag", "b", true)},
				HeadersToRemove: []string{"x-drop"},
			}},
		}, nil
	}
	return &auth.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(codes.PermissionDenied)},
		HttpResponse: &auth.CheckResponse_DeniedResponse{DeniedResponse: &auth.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode_Unauthorized},
			Headers: []*core.HeaderValueOption{header("www-authenticate", "Bearer", false)},
			Body:    "sign in first\n",
		}},
	}, nil
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: extauthz HOST:PORT")
		os.Exit(2)
	}
	l, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("listening %s\n", l.Addr())
	s := grpc.NewServer()
	auth.RegisterAuthorizationServer(s, server{})
	if err := s.Serve(l); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
