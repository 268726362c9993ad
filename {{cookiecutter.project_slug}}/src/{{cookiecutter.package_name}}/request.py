"""A chat request (the HTTP body, the CLI's `ask`, a batch line), and `sdk_arguments`, the one
place it becomes an SDK call. To pass another parameter to the gateway (`top_p`, `stop`...),
add a field to `Parameters` and a line to `sdk_arguments`: HTTP, CLI and batch take it then."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:  # the SDK's types only: `ask --help` does not import the SDK
    from openai.types.chat import ChatCompletionMessageParam

MAX_MESSAGES = 200
# Characters of content in one request, all messages together: its JSON fits under
# ALLTKN_MAX_BODY_BYTES's default (1 MiB).
MAX_CONTENT_CHARS = 200_000


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1, max_length=MAX_CONTENT_CHARS)


class Parameters(BaseModel):
    """Generation parameters passed on to the gateway (None: the gateway's default)."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(  # strict: "100", true and 1.0 are refused, not converted
        None,
        gt=0,
        strict=True,
        description="most tokens to generate (capped by ALLTKN_MAX_OUTPUT_TOKENS)",
    )
    temperature: float | None = Field(None, ge=0, le=2, description="sampling temperature, 0-2")


class ChatRequest(Parameters):
    """`messages` or `prompt`, not both; `user` and `task` are logged with the call."""

    messages: list[Message] | None = Field(None, min_length=1, max_length=MAX_MESSAGES)
    prompt: str | None = Field(None, min_length=1, max_length=MAX_CONTENT_CHARS)
    model: str | None = Field(None, min_length=1, max_length=200, pattern=r"^\S+$")
    user: str | None = Field(None, max_length=256)
    task: str | None = Field(None, max_length=128)

    @model_validator(mode="after")
    def _messages_or_prompt(self) -> ChatRequest:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("send either 'messages' or 'prompt', not both and not neither")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("'prompt' is blank")
        if (size := self.input_chars()) > MAX_CONTENT_CHARS:
            raise ValueError(
                f"the messages hold {size} characters in all; at most {MAX_CONTENT_CHARS}"
            )
        return self

    def to_messages(self) -> list[ChatCompletionMessageParam]:
        if self.prompt is not None:
            return [{"role": "user", "content": self.prompt}]
        # Each role is one of the Literal values above, so each dict is a valid message param.
        return [cast("ChatCompletionMessageParam", m.model_dump()) for m in self.messages or []]

    def input_chars(self) -> int:
        if self.prompt is not None:
            return len(self.prompt)
        return sum(len(message.content) for message in self.messages or [])


def sdk_arguments(request: ChatRequest, model: str, max_output_tokens: int) -> dict[str, Any]:
    """The keyword arguments of `chat.completions.create()` for `request` on `model`; the
    parameters the caller left out are not sent, except the server's output cap."""
    arguments = {
        "model": model,
        "messages": request.to_messages(),
        "max_tokens": request.max_tokens or max_output_tokens,
        "temperature": request.temperature,
    }
    return {name: value for name, value in arguments.items() if value is not None}
