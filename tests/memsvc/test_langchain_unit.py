"""langchain-tests' ChatModelUnitTests for ChatMemsvc (no server needed)."""

from __future__ import annotations

import pytest
from langchain_tests.unit_tests import ChatModelUnitTests

from memsvc.langchain import ChatMemsvc

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings("ignore:The test <Function:pytest.PytestWarning"),
]


class TestChatMemsvcUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatMemsvc]:
        return ChatMemsvc

    @property
    def chat_model_params(self) -> dict:
        return {"model": "memsvc", "base_url": "http://127.0.0.1:9", "api_key": "msk_test"}

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        env = {"MEMSVC_API_KEY": "msk_env", "MEMSVC_BASE_URL": "http://memsvc.internal:8000"}
        expected = {"api_key": "msk_env", "base_url": "http://memsvc.internal:8000"}
        return env, {}, expected

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return False
