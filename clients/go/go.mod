// The Go example and tests of chat-service's generated client (clients/README.md). Here they
// build offline in GOPATH mode over Debian's packages (tests/support/client_tests.py); this
// go.mod is for module mode, where the replace points at the generated code in the checkout
// (`go mod tidy` adds the rest, google.golang.org/genproto among them, from the module proxy).
module chat-service/clients/go

go 1.19

require (
	chat-service/gen/go v0.0.0
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)

replace chat-service/gen/go => ../../gen/go
