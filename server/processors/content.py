"""Normalizes and processes a message's content by kind; invalid content is INVALID_ARGUMENT
with field violations, raised before anything is stored."""

from __future__ import annotations

from chat.v1 import common_pb2
from server.domain.errors import FieldViolation, InvalidArgument
from server.domain.messages import ProcessedContent
from server.normalizers.text import normalize_text
from server.processors.location import process_location
from server.processors.media import MediaProcessor
from server.processors.text import TextProcessor

MAX_TEXT_CHARS = 4096
MAX_SELECTED_ID_CHARS = 256
MAX_TITLE_CHARS = 1024
# Before normalization: room for whitespace and control characters that normalization removes.
MAX_RAW_TEXT_CHARS = 4 * MAX_TEXT_CHARS

_TYPES = {
    "text": common_pb2.MESSAGE_TYPE_TEXT,
    "location": common_pb2.MESSAGE_TYPE_LOCATION,
    "interactive": common_pb2.MESSAGE_TYPE_INTERACTIVE,
    "interactive_reply": common_pb2.MESSAGE_TYPE_INTERACTIVE_REPLY,
}


class ContentProcessor:
    """Dispatches on the content's kind."""

    def __init__(self, *, text: TextProcessor, media: MediaProcessor) -> None:
        self._text = text
        self._media = media

    async def process_inbound(
        self, tenant_id: str, content: common_pb2.Content, *, channel: int, field: str
    ) -> ProcessedContent:
        """Content written by an end user on ``channel``."""
        kind = content.WhichOneof("kind")
        if kind is None:
            raise InvalidArgument(
                "content is required",
                field_violations=[
                    FieldViolation(
                        field,
                        "set exactly one of text, media, location, interactive_reply",
                    )
                ],
            )
        if kind == "text":
            return self._process_text(content.text.text, f"{field}.text.text")
        if kind == "location":
            location, violations = process_location(content.location, f"{field}.location")
            if violations:
                raise InvalidArgument("location is invalid", field_violations=violations)
            label = " ".join(filter(None, (location.name, location.address)))
            return ProcessedContent(
                content=common_pb2.Content(location=location),
                type=common_pb2.MESSAGE_TYPE_LOCATION,
                language="",
                entities=(),
                search_text=label.casefold(),
                metadata={},
            )
        if kind == "interactive_reply":
            return self._process_reply(content.interactive_reply, f"{field}.interactive_reply")
        if kind == "interactive":
            raise InvalidArgument(
                "end users answer interactive messages; they do not send them",
                field_violations=[
                    FieldViolation(f"{field}.interactive", "use interactive_reply for a choice")
                ],
            )
        return await self._process_media(tenant_id, content.media, channel, f"{field}.media")

    async def process_outbound(
        self, tenant_id: str, content: common_pb2.Content, *, channel: int, field: str
    ) -> ProcessedContent:
        """Content written by the responder (trusted, but normalized and checked for the
        channel the same way)."""
        kind = content.WhichOneof("kind")
        if kind == "media":
            return await self._process_media(tenant_id, content.media, channel, f"{field}.media")
        if kind == "text":
            normalized = normalize_text(content.text.text).text[:MAX_TEXT_CHARS]
            return ProcessedContent(
                content=common_pb2.Content(text=common_pb2.TextContent(text=normalized)),
                type=common_pb2.MESSAGE_TYPE_TEXT,
                language="",
                entities=(),
                search_text=normalized.casefold(),
                metadata={},
            )
        search_text = content.interactive.body.casefold() if kind == "interactive" else ""
        return ProcessedContent(
            content=content,
            type=_TYPES.get(kind or "", common_pb2.MESSAGE_TYPE_UNSPECIFIED),
            language="",
            entities=(),
            search_text=search_text,
            metadata={},
        )

    async def _process_media(
        self, tenant_id: str, media: common_pb2.MediaContent, channel: int, field: str
    ) -> ProcessedContent:
        processed = await self._media.process(tenant_id, media, channel=channel, field=field)
        caption = normalize_text(processed.content.caption).text
        processed.content.caption = caption
        return ProcessedContent(
            content=common_pb2.Content(media=processed.content),
            type=processed.type,
            language="",
            entities=(),
            search_text=" ".join(filter(None, (caption, processed.content.file_name))).casefold(),
            metadata=processed.metadata,
        )

    def _process_text(self, raw: str, field: str) -> ProcessedContent:
        # Refuse what cannot fit before normalizing it: normalization is linear but not free,
        # and a 25 MiB request would hold the event loop for seconds.
        if len(raw) > MAX_RAW_TEXT_CHARS:
            raise InvalidArgument(
                "text is too long",
                field_violations=[FieldViolation(field, f"at most {MAX_TEXT_CHARS} characters")],
            )
        normalized = normalize_text(raw)
        if not normalized.text:
            raise InvalidArgument(
                "text is empty",
                field_violations=[FieldViolation(field, "must contain visible characters")],
            )
        if len(normalized.text) > MAX_TEXT_CHARS:
            raise InvalidArgument(
                "text is too long",
                field_violations=[FieldViolation(field, f"at most {MAX_TEXT_CHARS} characters")],
            )
        analysis = self._text.analyse(normalized.text)
        return ProcessedContent(
            content=common_pb2.Content(text=common_pb2.TextContent(text=normalized.text)),
            type=common_pb2.MESSAGE_TYPE_TEXT,
            language=analysis.language,
            entities=analysis.entities,
            search_text=normalized.text.casefold(),
            metadata={
                "words": str(normalized.words),
                "removed_characters": str(normalized.removed_characters),
            },
        )

    @staticmethod
    def _process_reply(reply: common_pb2.InteractiveReply, field: str) -> ProcessedContent:
        violations = []
        if len(reply.title) > MAX_TITLE_CHARS:
            violations.append(
                FieldViolation(f"{field}.title", f"at most {MAX_TITLE_CHARS} characters")
            )
        if len(reply.reply_to_message_id) > MAX_SELECTED_ID_CHARS:
            violations.append(
                FieldViolation(
                    f"{field}.reply_to_message_id", f"at most {MAX_SELECTED_ID_CHARS} characters"
                )
            )
        if not reply.selected_id:
            violations.append(FieldViolation(f"{field}.selected_id", "required"))
        elif len(reply.selected_id) > MAX_SELECTED_ID_CHARS:
            violations.append(
                FieldViolation(
                    f"{field}.selected_id", f"at most {MAX_SELECTED_ID_CHARS} characters"
                )
            )
        if violations:
            raise InvalidArgument("interactive reply is invalid", field_violations=violations)
        title = normalize_text(reply.title).text
        cleaned = common_pb2.InteractiveReply(
            selected_id=reply.selected_id,
            title=title,
            reply_to_message_id=reply.reply_to_message_id,
        )
        return ProcessedContent(
            content=common_pb2.Content(interactive_reply=cleaned),
            type=common_pb2.MESSAGE_TYPE_INTERACTIVE_REPLY,
            language="",
            entities=(),
            search_text=title.casefold(),
            metadata={},
        )
