// The example of clients/README.md: send a message, print the reply, follow the
// conversation's stream; a failed call prints the server's reason.
//
//	go run ./example -target 127.0.0.1:8001 -token "$TOKEN"
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"time"

	chatclient "chat-service/clients/go"
	chatv1 "chat-service/gen/go/chat/v1"

	"google.golang.org/protobuf/proto"
)

func main() {
	target := flag.String("target", "127.0.0.1:8001", "chat-server host:port")
	token := flag.String("token", "", "bearer token (make run prints one)")
	follow := flag.Duration("follow", 5*time.Second, "how long to follow the stream")
	flag.Parse()

	conn, err := chatclient.Dial(*target, *token)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	chat := chatv1.NewChatServiceClient(conn)

	sent, err := chat.SendMessage(context.Background(), &chatv1.SendMessageRequest{
		UserId:  "u1",
		Channel: chatv1.ChannelType_CHANNEL_TYPE_WEB,
		Content: &chatv1.Content{Kind: &chatv1.Content_Text{Text: &chatv1.TextContent{Text: "hello"}}},
	})
	if err != nil {
		log.Fatalf("SendMessage failed: %v", chatclient.DetailsOf(err))
	}
	fmt.Println("reply:", sent.GetReplies()[0].GetContent().GetText().GetText())

	ctx, cancel := context.WithTimeout(context.Background(), *follow)
	defer cancel()
	stream, err := chat.StreamConversationEvents(ctx, &chatv1.StreamConversationEventsRequest{
		ConversationId: sent.GetConversation().GetId(),
		AfterSequence:  proto.Int64(0), // replay from the start, then live events
	})
	if err != nil {
		log.Fatal(err)
	}
	for {
		event, err := stream.Recv()
		if err != nil {
			return // the deadline (or the server) ended the stream
		}
		m := event.GetMessage()
		fmt.Println(m.GetSequence(), m.GetDirection(), m.GetContent().GetText().GetText())
	}
}
