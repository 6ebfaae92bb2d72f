"""WARC files built by the tests: realistic HTML pages in several languages and charsets, written record by record.

Records are written by hand (WARC/1.0 headers, an HTTP response block, CRLF CRLF), one gzip member each when
gzipped, exactly as crawlers do; no WARC library is used, so the reader is tested against the format itself.
"""

from __future__ import annotations

import gzip
import uuid
from dataclasses import dataclass
from pathlib import Path

ARTICLES = {
    "en": [
        "The community garden on Elm Street opened its gates this spring after three years of planning by local "
        "residents. Volunteers cleared the abandoned lot, built raised beds from reclaimed timber and installed a "
        "rainwater tank that now supplies most of the water needed during the summer months.",
        "Each family that signed up received a small plot and a short course on composting, crop rotation and the "
        "safe use of tools. Older members say the project has changed the way neighbours talk to each other, "
        "because people who never met before now share seeds, advice and the occasional basket of tomatoes.",
        "The organisers hope to add a greenhouse next year so that children from the nearby school can grow "
        "seedlings in winter and learn where their food comes from.",
    ],
    "de": [
        "Der Gemeinschaftsgarten in der Lindenstraße hat in diesem Frühjahr nach drei Jahren Planung seine Tore "
        "geöffnet. Freiwillige räumten das verlassene Grundstück, bauten Hochbeete aus gebrauchtem Holz und "
        "stellten einen Regenwassertank auf, der im Sommer fast das ganze Gießwasser liefert.",
        "Jede Familie, die sich angemeldet hat, bekam eine kleine Parzelle und einen kurzen Kurs über Kompost, "
        "Fruchtfolge und den sicheren Umgang mit Werkzeug. Ältere Mitglieder erzählen, dass sich die Nachbarn "
        "seitdem viel öfter grüßen, Saatgut tauschen und sich gegenseitig beim Gießen helfen.",
        "Im nächsten Jahr soll ein Gewächshaus dazukommen, damit Kinder der benachbarten Grundschule auch im "
        "Winter Setzlinge ziehen können.",
    ],
    "fr": [
        "Le jardin partagé de la rue des Tilleuls a ouvert ses portes ce printemps après trois années de "
        "préparation par les habitants du quartier. Des bénévoles ont débarrassé le terrain abandonné, construit "
        "des bacs surélevés en bois de récupération et installé une cuve qui récupère l'eau de pluie.",
        "Chaque famille inscrite a reçu une petite parcelle ainsi qu'une courte formation sur le compost, la "
        "rotation des cultures et l'utilisation prudente des outils. Les plus anciens racontent que les voisins "
        "se parlent désormais bien davantage, échangent des graines et partagent parfois leurs récoltes.",
        "Les organisateurs espèrent construire une serre l'an prochain pour que les élèves de l'école voisine "
        "puissent faire pousser des semis pendant l'hiver.",
    ],
    "ru": [
        "Общественный сад на Липовой улице открылся этой весной после трёх лет подготовки местными жителями. "
        "Добровольцы расчистили заброшенный участок, построили высокие грядки из старых досок и установили бак "
        "для дождевой воды, которого хватает почти на всё лето.",
        "Каждая семья получила небольшой участок и короткий курс о компосте, севообороте и безопасной работе с "
        "инструментами. Пожилые участники говорят, что соседи теперь чаще здороваются, обмениваются семенами и "
        "помогают друг другу с поливом в жаркие дни.",
        "В следующем году организаторы надеются построить теплицу, чтобы дети из соседней школы могли "
        "выращивать рассаду и зимой.",
    ],
    "zh": [
        "椴树街的社区花园在筹备了三年之后，于今年春天正式开放。志愿者们清理了废弃的空地，用回收的木材搭建了高床，"
        "并安装了一个雨水收集箱，夏天几乎所有的浇灌用水都来自这里。",
        "每个报名的家庭都分到了一小块地，并参加了关于堆肥、轮作以及安全使用工具的简短课程。年长的成员说，"
        "自从花园开放以来，邻居们见面时更愿意打招呼，还会互相交换种子、分享经验。",
        "组织者希望明年再建一座温室，让附近小学的孩子们在冬天也能培育幼苗，了解食物是从哪里来的。",
    ],
}


def article_html(lang: str, title: str, charset_meta: str | None = None, extra: str = "") -> str:
    """A page as crawled: head with scripts and styles, navigation, the article, a sidebar and a footer."""
    meta = f'<meta charset="{charset_meta}">' if charset_meta else ""
    paragraphs = "\n".join(f"<p>{p}</p>" for p in ARTICLES[lang])
    return f"""<!DOCTYPE html>
<html lang="{lang}"><head>{meta}<title>{title}</title>
<script>window.dataLayer = window.dataLayer || []; function gtag(){{dataLayer.push(arguments);}}</script>
<style>body {{ font-family: sans-serif; }} nav a {{ margin: 0 4px; }}</style></head>
<body>
<header><nav><a href="/">Home</a> <a href="/news">News</a> <a href="/events">Events</a> <a href="/about">About</a>
<a href="/contact">Contact</a></nav></header>
<main><article><h1>{title}</h1>
{paragraphs}
{extra}
</article></main>
<aside><h3>Popular</h3><ul><li><a href="/a">Ten tips</a></li><li><a href="/b">Weather</a></li></ul></aside>
<footer><p>&copy; 2026 Neighbourhood News. All rights reserved.</p><a href="/privacy">Privacy</a></footer>
<script>gtag('config', 'G-XXXX');</script>
</body></html>"""


@dataclass(frozen=True, slots=True)
class Page:
    """One response record to write: `body` already encoded; `content_type` is the HTTP Content-Type header."""

    url: str
    body: bytes
    content_type: str | None = "text/html; charset=utf-8"
    record_type: str = "response"
    record_id: str = ""

    def with_id(self) -> Page:
        return Page(self.url, self.body, self.content_type, self.record_type, f"urn:uuid:{uuid.uuid4()}")


def http_block(page: Page) -> bytes:
    headers = "HTTP/1.1 200 OK\r\nServer: nginx\r\n"
    if page.content_type:
        headers += f"Content-Type: {page.content_type}\r\n"
    headers += f"Content-Length: {len(page.body)}\r\n\r\n"
    return headers.encode("ascii") + page.body


def warc_record(
    record_type: str, block: bytes, url: str | None, record_id: str | None = None, content_type: str = ""
) -> bytes:
    """One WARC/1.0 record: version line, named fields, blank line, block, CRLF CRLF."""
    fields = [
        "WARC/1.0",
        f"WARC-Type: {record_type}",
        f"WARC-Record-ID: <{record_id or f'urn:uuid:{uuid.uuid4()}'}>",
        "WARC-Date: 2026-11-20T08:15:00Z",
    ]
    if url:
        fields.append(f"WARC-Target-URI: {url}")
    if content_type:
        fields.append(f"Content-Type: {content_type}")
    fields.append(f"Content-Length: {len(block)}")
    return ("\r\n".join(fields) + "\r\n\r\n").encode("utf-8") + block + b"\r\n\r\n"


def response_record(page: Page) -> bytes:
    if page.record_type == "conversion":
        return warc_record("conversion", page.body, page.url, page.record_id, "text/plain")
    return warc_record("response", http_block(page), page.url, page.record_id, "application/http; msgtype=response")


def warcinfo_record() -> bytes:
    info = b"software: webr-tests\r\nformat: WARC File Format 1.0\r\n"
    return warc_record("warcinfo", info, None, content_type="application/warc-fields")


def request_record(url: str) -> bytes:
    block = f"GET / HTTP/1.1\r\nHost: {url.split('/')[2]}\r\n\r\n".encode()
    return warc_record("request", block, url, content_type="application/http; msgtype=request")


def write_warc(path: Path, records: list[bytes], gzipped: bool | None = None) -> Path:
    """Write records, each its own gzip member when `path` ends in .gz (or `gzipped` says so)."""
    zipped = path.name.endswith(".gz") if gzipped is None else gzipped
    with open(path, "wb") as fh:
        for record in records:
            fh.write(gzip.compress(record) if zipped else record)
    return path


def crawl_pages() -> list[Page]:
    """The pages every crawl test starts from, each with a fresh record id."""
    pages = [
        Page("https://garden.example.org/en/news/1", article_html("en", "A garden for Elm Street").encode()),
        Page(
            "https://garden.example.de/de/1",
            article_html("de", "Ein Garten für die Lindenstraße").encode("iso-8859-1"),
            "text/html; charset=ISO-8859-1",
        ),
        Page(
            "https://garden.example.fr/fr/1",
            article_html("fr", "Un jardin rue des Tilleuls").encode("utf-8"),
            "text/html; charset=iso-8859-1",  # wrong: the bytes are UTF-8
        ),
        Page(
            "https://garden.example.ru/ru/1",
            article_html("ru", "Сад на Липовой улице", charset_meta="windows-1251").encode("cp1251"),
            "text/html",  # no charset in HTTP: the <meta> says it
        ),
        Page("https://garden.example.cn/zh/1", article_html("zh", "椴树街的社区花园").encode("gb18030"), None),
    ]
    return [p.with_id() for p in pages]
