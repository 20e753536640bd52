"""docs/async.md's web application, run as written: concurrent requests, some cancelled."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import semdb

DOC = Path(__file__).resolve().parent.parent / "docs" / "async.md"
TOPICS = ["rivers", "castles", "harbours", "deserts", "forests", "islands"]


def app_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    (source,) = [block for block in blocks if "Starlette(" in block]
    return source


@pytest.fixture()
def app(
    engine: sa.Engine, tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Any:
    home = tmp_path / "home"
    shutil.copytree(tiny_bundle, home / "models" / "tiny" / "1")
    monkeypatch.setenv("SEMDB_HOME", str(home))
    monkeypatch.setenv("SEMDB_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    namespace: dict[str, Any] = {"MODEL": "tiny", "DIMENSION": 32, "__name__": "app"}
    exec(compile(app_source(), str(DOC), "exec", dont_inherit=True), namespace)
    article = namespace["Article"]
    article.metadata.create_all(engine)
    titles = [f"a story about {TOPICS[i % 6]} number {i}" for i in range(120)]
    vectors = namespace["embedder"].embed(titles)
    with engine.begin() as connection:
        connection.execute(
            sa.insert(article),
            [
                {"id": i, "title": t, "section": "news" if i % 2 else "travel", "embedding": v}
                for i, (t, v) in enumerate(zip(titles, vectors, strict=True))
            ],
        )
    yield namespace
    article.metadata.drop_all(engine)


def test_the_documented_web_application_serves_concurrent_searches(
    app: dict[str, Any], engine: sa.Engine
) -> None:
    async def main() -> list[Any]:
        transport = httpx.ASGITransport(app=app["app"])
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:

            async def ask(i: int) -> Any:
                params = {"q": TOPICS[i % 6]}
                if i % 3 == 0:
                    params["section"] = "news"
                request = client.get("/search", params=params)
                if i % 5 == 4:  # a client that goes away
                    with pytest.raises(asyncio.TimeoutError):
                        await asyncio.wait_for(request, timeout=0.0001)
                    return None
                return (i, (await request).json())

            answers = await asyncio.gather(*(ask(i) for i in range(40)))
            after = (await client.get("/search", params={"q": "castles"})).json()
            hostile = await client.get("/search", params={"q": "x", "section": "'; DROP --"})
        await app["engine"].dispose()
        return [*answers, (-1, after), (-2, hostile.json())]

    answers = [answer for answer in asyncio.run(main()) if answer is not None]
    assert len(answers) > 30
    article, embedder = app["Article"], app["embedder"]
    with Session(engine) as session:
        for i, answer in answers:
            if i == -2:
                assert answer["hits"] == []  # a value, never SQL
                continue
            text = "castles" if i == -1 else TOPICS[i % 6]
            where = article.section == "news" if i >= 0 and i % 3 == 0 else None
            want = semdb.search(
                session, article.embedding, text, embedder=embedder, k=5, where=where
            )
            assert [hit["id"] for hit in answer["hits"]] == [hit.row.id for hit in want]
            assert answer["plan"] == want.plan.path
        assert session.execute(sa.select(sa.func.count()).select_from(article)).scalar() == 120
