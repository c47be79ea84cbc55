"""A Synapse module that filters messages by keyword for the users of one "region".

It plays the platform side of message_delivery tests: WeChat filters the messages of accounts
registered in China and not those of others (Knockel et al.), so a region here is the set of
local users whose localpart starts with a prefix (`cn_`). Rules are conjunctive: a rule
`["tiananmen", "1989"]` fires only when every word is in the message body (case-insensitive).
Modes, as platforms behave:

- `reject`: the sender gets 403 with an errcode (`check_event_for_spam`);
- `drop`: the sender gets 200 and an event ID, the event is never stored, so no receiver
  sees it. This is Synapse's own shadow-ban path (ShadowBanError, a fake event ID);
- `modify`: the event is stored with every rule word masked (third-party rules callback).

Load it once per region in the homeserver config:

    modules:
      - module: synapse_filter.KeywordFilter
        config: {region_prefix: "cn_", mode: "drop", rules: [["falun"], ["tiananmen", "1989"]]}
"""

from __future__ import annotations

from typing import Any

MODES = ("drop", "reject", "modify")


class KeywordFilter:
    """One region's keyword rules, registered as Synapse module callbacks."""

    def __init__(self, config: dict[str, Any], api: Any) -> None:
        self.prefix = str(config["region_prefix"])
        self.mode = str(config.get("mode", "drop"))
        self.rules = [tuple(str(w).lower() for w in rule) for rule in config["rules"]]
        if self.mode == "modify":
            api.register_third_party_rules_callbacks(check_event_allowed=self.check_event_allowed)
        else:
            api.register_spam_checker_callbacks(check_event_for_spam=self.check_event_for_spam)

    @staticmethod
    def parse_config(config: dict[str, Any]) -> dict[str, Any]:
        if config.get("mode", "drop") not in MODES:
            raise ValueError(f"synapse_filter: mode must be one of {MODES}")
        if not config.get("region_prefix") or not config.get("rules"):
            raise ValueError("synapse_filter: region_prefix and rules are required")
        return config

    def _in_region(self, sender: str) -> bool:
        return sender.startswith("@" + self.prefix)

    def matching(self, body: str) -> list[tuple[str, ...]]:
        text = body.lower()
        return [rule for rule in self.rules if all(word in text for word in rule)]

    def _filtered(self, event: Any) -> bool:
        if event.type != "m.room.message" or not self._in_region(event.sender):
            return False
        body = event.content.get("body")
        return isinstance(body, str) and bool(self.matching(body))

    async def check_event_for_spam(self, event: Any) -> Any:
        from synapse.api.errors import Codes, ShadowBanError
        from synapse.module_api import NOT_SPAM

        if not self._filtered(event):
            return NOT_SPAM
        if self.mode == "drop":
            raise ShadowBanError()  # the client API answers 200 with a fake event ID
        return Codes.FORBIDDEN, {}

    async def check_event_allowed(
        self, event: Any, state_events: Any
    ) -> tuple[bool, dict[str, Any] | None]:
        if not self._filtered(event):
            return True, None
        body = str(event.content["body"])
        for rule in self.matching(body):
            for word in rule:
                body = _mask(body, word)
        new = event.get_dict()
        new["content"] = {**new["content"], "body": body}
        return True, new


def _mask(text: str, word: str) -> str:
    """`text` with every case-insensitive occurrence of `word` replaced by asterisks."""
    lower, out, i = text.lower(), [], 0
    while (j := lower.find(word, i)) >= 0:
        out.append(text[i:j] + "*" * len(word))
        i = j + len(word)
    out.append(text[i:])
    return "".join(out)
