"""The outbound side's trust rules without I/O: signed unsubscribe links, signing-key lengths, SMTP transport
options, start-up refusals, templates that must exist, links and recipients (issues 15 and 16)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from connectors.email import EmailConfig
from connectors.links import http_url, product_link, same_origin_https
from engine import unsubscribe_links
from engine.config import ConfigError, Settings
from engine.dispatch.config import (
    connector_types,
    load_connectors,
    parse_connectors,
    startup_problems,
    template_exists,
    uses_templates,
)
from engine.dispatch.policies.caps import recipient_key
from engine.unsubscribe_links import LinkCheck

REPO = Path(__file__).resolve().parents[2]
SECRET = "k" * 32
PROD = {"NUDGE_BROKER_PROFILE": "kafka"}
DEV = {"NUDGE_BROKER_PROFILE": "dev"}


# --- unsubscribe links (engine/unsubscribe_links.py: the email connector writes them, the collector verifies)
def test_unsubscribe_link_format_and_verification() -> None:
    url = unsubscribe_links.link("https://c.example/", SECRET, "lead a/b.c", 2_000_000_000)
    expected_sig = unsubscribe_links.signature(SECRET, "lead a/b.c", 2_000_000_000)
    assert url == f"https://c.example/v1/unsubscribe?l=lead%20a%2Fb.c&e=2000000000&s={expected_sig}"
    import hashlib
    import hmac

    assert expected_sig == hmac.new(SECRET.encode(), b"lead a/b.c.2000000000", hashlib.sha256).hexdigest()
    now = 1_900_000_000
    ok = unsubscribe_links.verify([SECRET], "lead a/b.c", "2000000000", expected_sig, now_s=now)
    assert ok is LinkCheck.VALID
    assert unsubscribe_links.verify(["old" * 11, SECRET], "lead a/b.c", 2_000_000_000, expected_sig.upper(), now) is (
        LinkCheck.VALID
    )  # rotation: any configured secret; hex case does not matter
    cases = [
        (("lead a/b.c", "2000000000", expected_sig, 2_100_000_000), LinkCheck.EXPIRED),
        (("other", "2000000000", expected_sig, now), LinkCheck.FORGED),
        (("lead a/b.c", "2000000001", expected_sig, now), LinkCheck.FORGED),  # a longer life is not signed
        (("lead a/b.c", "2e9", expected_sig, now), LinkCheck.MALFORMED),
        (("lead a/b.c", "2000000000", "zz", now), LinkCheck.MALFORMED),
        (("lead a/b.c", "", expected_sig, now), LinkCheck.MISSING),
        ((None, "2000000000", expected_sig, now), LinkCheck.MISSING),
        (("lead a/b.c", "2000000000", None, now), LinkCheck.MISSING),
    ]
    for (lead, expiry, sig, at), verdict in cases:
        assert unsubscribe_links.verify([SECRET], lead, expiry, sig, now_s=at) is verdict, (lead, expiry, sig)
    assert unsubscribe_links.verify([], "x", "1", expected_sig) is LinkCheck.NO_SECRET
    assert unsubscribe_links.verify([""], "x", "1", expected_sig) is LinkCheck.NO_SECRET


def test_link_expiry_is_stable_within_the_hour() -> None:
    a = unsubscribe_links.expiry_for(1_000_000_000.0, 86400)
    assert a % 3600 == 0 and a > 1_000_000_000 + 86400
    assert unsubscribe_links.expiry_for(1_000_000_100.0, 86400) == a


def test_the_links_module_is_a_stdlib_leaf() -> None:
    tree = (REPO / "engine" / "unsubscribe_links.py").read_text()
    imports = [line.split()[1] for line in tree.splitlines() if line.startswith(("import ", "from "))]
    assert set(imports) <= {"__future__", "hashlib", "hmac", "time", "collections.abc", "enum", "urllib.parse"}


# --- signing keys: 32 bytes outside the dev profile
@pytest.mark.parametrize(
    ("snippet", "path"),
    [
        ("w: {type: webhook, url: 'http://x/h', secret: short-secret}", "connectors.w.secret"),
        ("m: {type: email, unsubscribe_secret: short-secret}", "connectors.m.unsubscribe_secret"),
    ],
)
def test_short_signing_keys_are_refused_outside_the_dev_profile(snippet: str, path: str) -> None:
    text = f"connectors:\n  {snippet}\n"
    with pytest.raises(ConfigError) as raised:
        parse_connectors(text, env=PROD, source="/etc/nudge/connectors.yaml")
    message = str(raised.value)
    assert message.startswith(f"/etc/nudge/connectors.yaml:2: {path}: ") and "32 bytes" in message
    assert "short-secret" not in message
    with pytest.raises(ConfigError):
        parse_connectors(text, env={})  # no profile: production rules
    parse_connectors(text, env=DEV)  # the dev stack accepts it
    parse_connectors(text.replace("short-secret", SECRET), env=PROD)


def test_marketing_email_is_refused_at_start_without_an_unsubscribe_secret_outside_dev() -> None:
    text = (
        "connectors:\n  shop: {type: email, unsubscribe_base_url: 'https://c.example'}\n"
        "  reps: {type: email, marketing: false}\n"
    )
    loaded = parse_connectors(text, env=PROD)
    prod = Settings(broker_profile="kafka")
    problems = startup_problems(loaded, prod)
    assert len(problems) == 1 and "connectors.shop.unsubscribe_secret is empty" in problems[0]
    assert startup_problems(loaded, Settings(broker_profile="dev")) == []
    signed = parse_connectors(
        f"connectors:\n  shop: {{type: email, unsubscribe_secret: {SECRET}, unsubscribe_base_url: 'http://c'}}\n",
        env=PROD,
    )
    [https_problem] = startup_problems(signed, prod)
    assert "must be an https URL" in https_problem
    good = signed.connectors["shop"].model_copy(update={"unsubscribe_base_url": "https://c.example"})
    signed.connectors["shop"] = good
    assert startup_problems(signed, prod) == []


def test_an_unsigned_webhook_is_refused_at_start_outside_dev() -> None:
    unsigned = parse_connectors("connectors:\n  hook: {type: webhook, url: 'https://h.example'}\n", env=PROD)
    [problem] = startup_problems(unsigned, Settings(broker_profile="kafka"))
    assert "connectors.hook.secret is empty" in problem
    assert startup_problems(unsigned, Settings(broker_profile="dev")) == []
    signed = parse_connectors(f"connectors:\n  hook: {{type: webhook, url: 'https://h', secret: {SECRET}}}\n", env=PROD)
    assert startup_problems(signed, Settings(broker_profile="kafka")) == []


def test_old_unsubscribe_url_option_is_refused_with_the_way_forward() -> None:
    with pytest.raises(ConfigError, match="replaced by unsubscribe_base_url"):
        parse_connectors("connectors:\n  e: {type: email, unsubscribe_url: 'https://x/u?l={lead_id}'}\n", env=DEV)


def test_clear_text_smtp_auth_is_a_load_error_naming_the_way_out() -> None:
    text = "connectors:\n  e: {type: email, security: none, username: u, password: p}\n"
    with pytest.raises(ConfigError, match="allow_plaintext_auth"):
        parse_connectors(text, env=DEV)
    ok = text.replace("password: p}", "password: p, allow_plaintext_auth: true}")
    assert parse_connectors(ok, env=DEV).connectors["e"].security == "none"
    assert EmailConfig.model_validate({"type": "email"}).security == "starttls"


# --- connector names are the user's; templates must exist
def test_connector_names_and_templates_for_the_rule_validator(tmp_path: Path) -> None:
    (tmp_path / "mine" / "email").mkdir(parents=True)
    for part in ("subject", "txt", "html"):
        (tmp_path / "mine" / "email" / f"spring_sale.{part}.j2").write_text("x")
    (tmp_path / "mine" / "email" / "half.html.j2").write_text("x")
    text = (
        "templates_dir: mine\n"
        "connectors:\n  email_eu: {type: email}\n  email_us: {type: email}\n  alerts: {type: slack, webhook_url: "
        "'http://x'}\n  hook: {type: webhook, url: 'http://x'}\n"
    )
    loaded = parse_connectors(text, env=DEV, base_dir=tmp_path)
    assert connector_types(loaded) == {"email_eu": "email", "email_us": "email", "alerts": "slack", "hook": "webhook"}
    assert template_exists(loaded, "email_eu", "cart_reminder")  # built in
    assert template_exists(loaded, "email_us", "spring_sale")  # the user's templates_dir
    assert template_exists(loaded, "email_us", None)  # no name: default
    assert not template_exists(loaded, "email_eu", "cart_remindr")  # misspelt
    assert not template_exists(loaded, "email_eu", "half")  # only the html part
    assert not template_exists(loaded, "email_eu", "../../etc/passwd")
    assert not template_exists(loaded, "email_eu", "hot_lead")  # a Slack template is no email template
    assert template_exists(loaded, "alerts", "hot_lead") and not template_exists(loaded, "alerts", "spring_sale")
    assert template_exists(loaded, "hook", "anything")  # webhooks render no template: the name is ignored
    assert uses_templates(loaded, "alerts") and not uses_templates(loaded, "hook")
    assert not template_exists(loaded, "nope", "default") and not uses_templates(loaded, "nope")


def test_every_shipped_rule_names_a_template_that_exists() -> None:
    loaded = load_connectors(REPO / "connectors.yaml", env={})
    pairs: list[tuple[str, str | None]] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("connector"), str):
                pairs.append((node["connector"], node.get("template")))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in (REPO / "rules").glob("*.yaml"):
        if not path.name.endswith(".test.yaml"):
            walk(yaml.safe_load(path.read_text()))
    assert pairs
    missing = [pair for pair in pairs if not template_exists(loaded, *pair)]
    assert not missing, missing


# --- links and recipients
def test_links_to_the_shop_only() -> None:
    site = "https://shop.example"
    assert same_origin_https("https://shop.example/p/1?x=1#y", site) == "https://shop.example/p/1?x=1#y"
    assert same_origin_https("https://shop.example:443/p", site) == "https://shop.example:443/p"
    for bad in ("javascript:alert(1)", "JaVaScRiPt:alert(1)", "data:text/html,x", "http://shop.example/p",
                "https://evil.example/p", "https://shop.example.evil.example/", "https://shop.example@evil.example/",
                "https://shop.example:8443/p", "//evil.example/p", "/p/1", " https://shop.example/p",
                "https://shop.example/p\nx", "https://shop.example\\@evil.example/", None, 5):  # fmt: skip
        assert same_origin_https(bad, site) is None, bad
    assert same_origin_https("http://shop.example/p", "http://shop.example") is None  # https only
    assert product_link("{site_url}/products/{product_id}", site + "/", "a/b?c#d") == (
        "https://shop.example/products/a%2Fb%3Fc%23d"
    )
    assert product_link("{site_url}/p/{product_id}", site, None) is None
    assert http_url("https://campaign.example/x") and http_url("javascript:alert(1)") is None


def test_recipient_key_counts_one_mailbox_once() -> None:
    assert recipient_key("Ada+promo@Example.com ") == recipient_key("ada@example.com")
    assert recipient_key("ada@example.com") != recipient_key("bob@example.com")
    assert "ada" not in recipient_key("ada@example.com")  # hashed: no address in a Redis key name
