// The generated Go code of the chat.v1 contract (protoc-gen-go, protoc-gen-go-grpc; see
// clients/README.md). The module path is not fetchable: point a replace directive at a
// checkout. The versions are the oldest the generated code accepts and what Debian 12 ships
// (golang-google-grpc-dev 1.33.3, golang-google-protobuf-dev 1.28.1), which it is tested with.
module chat-service/gen/go

go 1.19

require (
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)
