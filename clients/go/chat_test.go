package chatclient_test

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"testing"
	"time"

	chatclient "chat-service/clients/go"
	chatv1 "chat-service/gen/go/chat/v1"

	"google.golang.org/protobuf/proto"
)

// connect dials the server the test run started (tests/clients/test_clients.py puts its
// address and tokens in the environment).
func connect(t *testing.T, tokenVar string) chatv1.ChatServiceClient {
	t.Helper()
	target, token := os.Getenv("CHAT_TEST_TARGET"), os.Getenv(tokenVar)
	if target == "" || token == "" {
		t.Fatalf("CHAT_TEST_TARGET and %s are not set: run these tests with `make test-clients`", tokenVar)
	}
	conn, err := chatclient.Dial(target, token)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return chatv1.NewChatServiceClient(conn)
}

func send(t *testing.T, chat chatv1.ChatServiceClient, user, conversation, text string) *chatv1.SendMessageResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sent, err := chat.SendMessage(ctx, &chatv1.SendMessageRequest{
		UserId:         user,
		ConversationId: conversation,
		Channel:        chatv1.ChannelType_CHANNEL_TYPE_WEB,
		Content:        &chatv1.Content{Kind: &chatv1.Content_Text{Text: &chatv1.TextContent{Text: text}}},
	})
	if err != nil {
		t.Fatalf("SendMessage: %v", chatclient.DetailsOf(err))
	}
	return sent
}

func newUser() string {
	return fmt.Sprintf("go-%08x", rand.New(rand.NewSource(time.Now().UnixNano())).Uint32())
}

func TestSendMessageAndStream(t *testing.T) {
	chat := connect(t, "CHAT_TEST_TOKEN")
	user := newUser()
	sent := send(t, chat, user, "", "hello")
	if got := sent.GetMessage().GetContent().GetText().GetText(); got != "hello" {
		t.Fatalf("stored text %q", got)
	}
	if len(sent.GetReplies()) != 1 || sent.GetReplies()[0].GetSequence() != 2 {
		t.Fatalf("replies %v", sent.GetReplies())
	}
	conversation := sent.GetConversation().GetId()

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	stream, err := chat.StreamConversationEvents(ctx, &chatv1.StreamConversationEventsRequest{
		ConversationId: conversation,
		AfterSequence:  proto.Int64(0),
	})
	if err != nil {
		t.Fatal(err)
	}
	next := func() *chatv1.Message {
		for {
			event, err := stream.Recv()
			if err != nil {
				t.Fatalf("stream: %v", err)
			}
			if m := event.GetMessage(); m != nil {
				return m
			}
		}
	}
	// The replay, then a message sent meanwhile and its reply, live.
	for want := int64(1); want <= 2; want++ {
		if m := next(); m.GetSequence() != want {
			t.Fatalf("replayed sequence %d, want %d", m.GetSequence(), want)
		}
	}
	send(t, chat, user, conversation, "help")
	live := next()
	if live.GetSequence() != 3 || live.GetContent().GetText().GetText() != "help" {
		t.Fatalf("live message %v", live)
	}
	if reply := next(); reply.GetSequence() != 4 || reply.GetDirection() != chatv1.MessageDirection_MESSAGE_DIRECTION_OUTBOUND {
		t.Fatalf("live reply %v", reply)
	}
}

func TestErrorDetails(t *testing.T) {
	chat := connect(t, "CHAT_TEST_TOKEN")
	_, err := chat.SendMessage(context.Background(), &chatv1.SendMessageRequest{})
	d := chatclient.DetailsOf(err)
	if d == nil || d.Code != "InvalidArgument" {
		t.Fatalf("want INVALID_ARGUMENT, got %v (%v)", d, err)
	}
	if _, ok := d.FieldViolations["user_id"]; !ok {
		t.Fatalf("no violation for user_id: %v", d.FieldViolations)
	}
	if d.Metadata["request_id"] == "" {
		t.Fatalf("no request id in %v", d.Metadata)
	}

	expired := connect(t, "CHAT_TEST_EXPIRED_TOKEN")
	_, err = expired.ListConversations(context.Background(), &chatv1.ListConversationsRequest{})
	if d := chatclient.DetailsOf(err); d == nil || d.Code != "Unauthenticated" || d.Reason != "TOKEN_EXPIRED" {
		t.Fatalf("want UNAUTHENTICATED TOKEN_EXPIRED, got %v", d)
	}
}
