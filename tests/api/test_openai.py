"""The OpenAI-compatible images API, driven by the official `openai` SDK, unmodified, against the emulator."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest
from PIL import Image

from imaged.daemon import Daemon
from imaged.simulator import Simulator

from .conftest import ALICE_KEY

pytestmark = pytest.mark.timeout(90)


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 80, 40)).save(out, format="PNG")
    return out.getvalue()


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


async def submits(simulator: Simulator, provider: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{simulator.url}/_sim/stats") as resp:
        count: int = (await resp.json())["providers"][provider]["submits"]
    return count


@pytest.fixture
async def client(api_daemon: Daemon) -> AsyncIterator[openai.AsyncOpenAI]:
    assert api_daemon.http_url is not None
    async with openai.AsyncOpenAI(
        base_url=f"{api_daemon.http_url}/v1", api_key=ALICE_KEY, max_retries=2
    ) as sdk:
        yield sdk


async def test_generate_urls_with_a_dashscope_model(client: openai.AsyncOpenAI) -> None:
    answer = await client.images.generate(model="wanx2.1-t2i-turbo", prompt="a red fox", n=2, size="768x512")
    data = answer.data or []
    assert len(data) == 2 and answer.created > 0
    async with (
        aiohttp.ClientSession() as http
    ):  # imaged's own copy, fetched with plain HTTP and no credentials
        for image in data:
            assert image.url is not None and "/v1/files/" in image.url and image.b64_json is None
            async with http.get(image.url) as resp:
                assert resp.status == 200 and resp.content_type == "image/png"
                assert size_of(await resp.read()) == (768, 512)
            async with http.get(image.url.replace("sig=", "sig=0")) as resp:  # a forged link is nothing
                assert resp.status == 404


@pytest.mark.parametrize("model", ["star-3-alpha-t2i", "wanx2.1-t2i-turbo"])
async def test_generate_b64_json(client: openai.AsyncOpenAI, model: str) -> None:
    answer = await client.images.generate(
        model=model, prompt="a red fox", size="640x512", response_format="b64_json"
    )
    (image,) = answer.data or []
    assert image.b64_json is not None and image.url is None
    assert size_of(base64.b64decode(image.b64_json)) == (640, 512)


async def test_generate_a_url_with_a_liblibai_model(client: openai.AsyncOpenAI) -> None:
    answer = await client.images.generate(model="star-3-alpha-t2i", prompt="a red fox", size="512x768")
    (image,) = answer.data or []
    assert image.url is not None and image.b64_json is None
    async with aiohttp.ClientSession() as http, http.get(image.url) as resp:
        assert resp.status == 200 and size_of(await resp.read()) == (512, 768)


async def test_generate_passes_provider_extras_and_the_revised_prompt(client: openai.AsyncOpenAI) -> None:
    answer = await client.images.generate(
        model="wanx2.1-t2i-plus",
        prompt="a red fox",
        quality="hd",  # OpenAI's: accepted and ignored
        extra_body={"negative_prompt": "blurry", "seed": 42, "prompt_extend": True},
    )
    (image,) = answer.data or []
    assert image.url is not None and image.revised_prompt  # DashScope's actual_prompt


async def test_edit_with_an_image_to_image_model(client: openai.AsyncOpenAI, api_daemon: Daemon) -> None:
    answer = await client.images.edit(
        model="wan2.5-i2i-preview",
        image=("fox.png", png(64, 48), "image/png"),
        prompt="the same fox, in blue",
        size="1024x1024",
    )
    (image,) = answer.data or []
    assert image.url is not None
    async with aiohttp.ClientSession() as http, http.get(image.url) as resp:
        assert size_of(await resp.read()) == (1024, 1024)
    # The provider is given a link to imaged's copy of the upload, never the bytes.
    (task,) = await api_daemon.store.list(owner="alice")
    (source,) = task.parameters["images"]
    assert "/v1/files/input_" in source and len(json.dumps(task.parameters)) < 1000


async def test_models_and_errors_in_the_openai_shape(client: openai.AsyncOpenAI, api_daemon: Daemon) -> None:
    listed = await client.models.list()
    names = {model.id for model in listed.data}
    assert {"wanx2.1-t2i-turbo", "wan2.1-t2i-turbo", "seedream-4.0"} <= names

    with pytest.raises(openai.BadRequestError) as bad:
        await client.images.generate(model="wanx2.1-t2i-turbo", prompt="a fox", size="4000x4000")
    assert "parameters.size" in bad.value.message and bad.value.response.headers["x-should-retry"] == "false"
    assert bad.value.body is not None and bad.value.body["code"] == "invalid_request"  # type: ignore[index]

    with pytest.raises(openai.NotFoundError):
        await client.images.generate(model="dall-e-3", prompt="a fox")

    assert api_daemon.http_url is not None
    async with openai.AsyncOpenAI(
        base_url=f"{api_daemon.http_url}/v1", api_key="wrong", max_retries=0
    ) as stranger:
        with pytest.raises(openai.AuthenticationError):
            await stranger.images.generate(model="wanx2.1-t2i-turbo", prompt="a fox")


async def test_broken_uploads_are_refused_with_400_and_never_reach_a_provider(
    client: openai.AsyncOpenAI, simulator: Simulator
) -> None:
    before = await submits(simulator, "aliyun")
    truncated = png(64, 48)[:40]  # a PNG signature, then nothing readable
    with pytest.raises(openai.BadRequestError) as broken:
        await client.images.edit(
            model="wan2.5-i2i-preview", image=("fox.png", truncated, "image/png"), prompt="in blue"
        )
    assert "image: the image is unreadable" in broken.value.message
    assert broken.value.response.headers["x-should-retry"] == "false"
    with pytest.raises(openai.BadRequestError) as not_an_image:
        await client.images.edit(
            model="wan2.5-i2i-preview",
            image=("fox.png", b"GIF? no: plain text", "image/png"),
            prompt="in blue",
        )
    assert "not a PNG, JPEG, GIF or WebP" in not_an_image.value.message
    too_many = {f"field{i}": str(i) for i in range(70)}
    with pytest.raises(openai.BadRequestError) as fields:
        await client.images.edit(
            model="wan2.5-i2i-preview",
            image=("fox.png", png(64, 48), "image/png"),
            prompt="x",
            extra_body=too_many,
        )
    assert "at most 64 form fields" in fields.value.message
    assert await submits(simulator, "aliyun") == before


async def test_a_form_of_one_name_repeated_is_capped_too(api_daemon: Daemon) -> None:
    form = aiohttp.FormData()
    form.add_field("image", png(8, 8), filename="a.png", content_type="image/png")
    for i in range(200):  # the same name again and again: each part counts
        form.add_field("prompt", f"take {i}")
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{api_daemon.http_url}/v1/images/edits",
            data=form,
            headers={"Authorization": f"Bearer {ALICE_KEY}"},
        ) as resp,
    ):
        body = await resp.json()
    assert resp.status == 400 and "at most 64 form fields" in body["error"]["message"]


class DropFirstResponse:
    """A TCP proxy in front of imaged that forwards the first request but drops its response (the connection
    closes when the answer starts), as a flaky network would; later connections pass through."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        drop = self.connections == 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, dropping: bool) -> None:
            try:
                while data := await src.read(65536):
                    if dropping:
                        return  # the answer has begun: drop it and close
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, drop))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_a_retry_after_a_dropped_response_pays_once(api_daemon: Daemon, simulator: Simulator) -> None:
    assert api_daemon.http_url is not None
    proxy = DropFirstResponse(int(api_daemon.http_url.rsplit(":", 1)[1]))
    port = await proxy.start()
    before = await submits(simulator, "aliyun")
    try:
        async with openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key=ALICE_KEY, max_retries=2
        ) as sdk:
            answer = await sdk.images.generate(model="wanx2.1-t2i-turbo", prompt="one fox, paid once")
    finally:
        await proxy.stop()
    assert len(answer.data or []) == 1
    assert proxy.connections >= 2  # the SDK did retry
    assert await submits(simulator, "aliyun") == before + 1


async def test_an_idempotency_key_attaches_and_refuses_another_body(
    api_daemon: Daemon, simulator: Simulator
) -> None:
    assert api_daemon.http_url is not None
    url = f"{api_daemon.http_url}/v1/images/generations"
    headers = {"Authorization": f"Bearer {ALICE_KEY}", "Idempotency-Key": "order-7"}
    body = {"model": "wanx2.1-t2i-turbo", "prompt": "a fox"}
    before = await submits(simulator, "aliyun")
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=body, headers=headers) as first:
            assert first.status == 200
            created = (await first.json())["created"]
        async with http.post(url, json=body, headers=headers) as again:
            assert again.status == 200 and (await again.json())["created"] == created
        async with http.post(url, json={**body, "prompt": "a wolf"}, headers=headers) as other:
            assert other.status == 409 and other.headers["x-should-retry"] == "false"
            assert "Idempotency-Key" in (await other.json())["error"]["message"]
        native = f"{api_daemon.http_url}/api/v1/tasks/"
        task = {"model": "wanx2.1-t2i-turbo", "parameters": {"prompt": "a fox"}}
        async with http.post(native, json=task, headers={**headers, "Idempotency-Key": "n-1"}) as one:
            task_id = (await one.json())["results"]["task_id"]
        async with http.post(native, json=task, headers={**headers, "Idempotency-Key": "n-1"}) as two:
            assert (await two.json())["results"]["task_id"] == task_id
        changed = {**task, "parameters": {"prompt": "a wolf"}}
        async with http.post(native, json=changed, headers={**headers, "Idempotency-Key": "n-1"}) as three:
            assert three.status == 409
    await asyncio.sleep(1.5)  # the native task runs on; count its submit once it has one
    assert await submits(simulator, "aliyun") == before + 2
