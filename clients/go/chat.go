// Package chatclient holds what the example and the tests share: a connection with the
// bearer token on every call, and the server's error details read from a failed call.
package chatclient

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// bearer sends "authorization: Bearer <token>" with every call.
type bearer string

func (t bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

// RequireTransportSecurity is false so that the token can go over a plaintext connection to
// a local server (`make run`); use TLS anywhere else.
func (bearer) RequireTransportSecurity() bool { return false }

// Dial connects to a chat-server at target (host:port) without TLS, sending token with
// every call.
func Dial(target, token string) (*grpc.ClientConn, error) {
	return grpc.Dial(target, grpc.WithInsecure(), grpc.WithPerRPCCredentials(bearer(token)))
}

// Details is the server's description of a failed call (google.rpc.Status details).
type Details struct {
	Code            string
	Message         string
	Reason          string            // ErrorInfo.reason, e.g. TOKEN_EXPIRED
	Metadata        map[string]string // ErrorInfo.metadata, with the call's request_id
	FieldViolations map[string]string // BadRequest: field -> description
	RetryDelay      time.Duration     // RetryInfo.retry_delay, when the server gives one
}

// DetailsOf reads the details of a failed call's error (nil for an error not from a call).
func DetailsOf(err error) *Details {
	s, ok := status.FromError(err)
	if !ok {
		return nil
	}
	d := &Details{Code: s.Code().String(), Message: s.Message(), FieldViolations: map[string]string{}}
	for _, detail := range s.Details() {
		switch v := detail.(type) {
		case *errdetails.ErrorInfo:
			d.Reason, d.Metadata = v.GetReason(), v.GetMetadata()
		case *errdetails.BadRequest:
			for _, f := range v.GetFieldViolations() {
				d.FieldViolations[f.GetField()] = f.GetDescription()
			}
		case *errdetails.RetryInfo:
			delay := v.GetRetryDelay()
			d.RetryDelay = time.Duration(delay.GetSeconds())*time.Second + time.Duration(delay.GetNanos())
		}
	}
	return d
}

func (d *Details) String() string {
	return fmt.Sprintf("%s %s: %s %v", d.Code, d.Reason, d.Message, d.FieldViolations)
}
