"""chat_client: the Python SDK of chat-service, an asyncio client over the generated stubs.

Every ``chat.v1`` service on one channel, with the bearer token (a string, or a function,
plain or async, asked before every call so that it can refresh), an ``x-request-id`` on every
call, a deadline, retries of UNAVAILABLE and RESOURCE_EXHAUSTED with backoff that honours the
server's RetryInfo (reads, and calls carrying a ``request_id``, only), iterators over cursor
pages, and one exception, ``ChatError``, with the reason, field violations, retry delay and
request id of a failed call::

    import asyncio

    from chat.v1 import chat_service_pb2 as chat, common_pb2 as common
    from chat_client import ChatClient, ChatError, new_request_id

    async def main(token: str) -> None:
        async with ChatClient.connect("127.0.0.1:8001", token=token) as client:
            sent = await client.call(
                client.chat.SendMessage,
                chat.SendMessageRequest(
                    request_id=new_request_id(),  # makes the call safe to retry
                    user_id="u1",
                    channel=common.CHANNEL_TYPE_WEB,
                    content=common.Content(text=common.TextContent(text="hello")),
                ),
            )
            print(sent.replies[0].content.text.text)
            request = chat.ListConversationsRequest(user_id="u1")
            async for conversation in client.pages(
                client.chat.ListConversations, request, lambda page: page.conversations
            ):
                print(conversation.id, conversation.message_count)
            try:
                await client.call(
                    client.chat.GetConversation, chat.GetConversationRequest(conversation_id="x")
                )
            except ChatError as error:
                print(error.code_name, error.reason, error.request_id)

    asyncio.run(main("..."))

``chatctl`` (``chat_client.cli``) is the command line built on it.
"""

from chat_client.client import ChatClient, Token, new_request_id, open_channel
from chat_client.errors import ChatError, FieldViolation, QuotaViolation
from chat_client.retry import NO_RETRIES, RetryPolicy

__all__ = [
    "NO_RETRIES",
    "ChatClient",
    "ChatError",
    "FieldViolation",
    "QuotaViolation",
    "RetryPolicy",
    "Token",
    "new_request_id",
    "open_channel",
]
