"""Per-model parameter validation: the original service's four requests, defaults, and readable errors."""

from __future__ import annotations

import json
from typing import Any, cast

import aiohttp
import pytest
from pydantic import SecretStr

from imaged.catalog import Catalog, ModelSpec
from imaged.contract import ErrorCategory, Request
from imaged.errors import InvalidRequest
from imaged.providers.aliyun import AliyunProvider, AliyunSettings, request_body
from imaged.providers.base import Provider
from imaged.providers.liblibai import OFFICIAL_F1_CHECKPOINT, LiblibProvider, LiblibSettings, route

from ..support import seed_body

STAR3_PROMPT = (
    "1 girl,lotus leaf,masterpiece,best quality,finely detail,highres,8k,beautiful and aesthetic,no watermark"
)
CAT_PROMPT = "focus on the cat,there is a cat holding a bag of mcdonald, product advertisement"

# The original README's four requests, read byte for byte from tests/fixtures/seed: model -> (normalised
# parameters, describe()).
EXPECTED: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "wanx2.1-t2i-turbo": (
        {
            "prompt": "一只可爱的小猫咪在草地上玩耍",
            "negative_prompt": "模糊, 扭曲, 低质量",
            "size": "1024*1024",
            "n": 1,
        },
        {"prompt": "一只可爱的小猫咪在草地上玩耍", "width": 1024, "height": 1024},
    ),
    "star-3-alpha-t2i": (
        {"generateParams": {"prompt": STAR3_PROMPT, "aspectRatio": "portrait", "imgCount": 1, "steps": 30}},
        {"prompt": STAR3_PROMPT, "width": 768, "height": 1024},
    ),
    "star-3-alpha-i2i": (
        {
            "generateParams": {
                "prompt": CAT_PROMPT,
                "sourceImage": "https://example.com/source-image.jpg",
                "imageSize": {"width": 768, "height": 1024},
                "imgCount": 1,
                "steps": 30,
            }
        },
        {"prompt": CAT_PROMPT, "width": 768, "height": 1024},
    ),
    "liblib-custom": (
        {
            "baseModelType": "f1",
            "generateParams": {
                "checkPointId": "412b427ddb674b4dbab9e5abd5ae6057",
                "prompt": "短发女孩",
                "negativePrompt": "低质量，模糊",
                "sampler": 1,
                "steps": 30,
                "cfgScale": 3.5,
                "width": 720,
                "height": 1440,
                "imgCount": 1,
                "additionalNetwork": [{"modelId": "d250a31f321e4cee84fe4115cabb8bc4", "weight": 0.8}],
            },
        },
        {"prompt": "短发女孩", "width": 720, "height": 1440},
    ),
}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


@pytest.fixture(scope="module")
def providers() -> dict[str, Provider]:
    session = cast(aiohttp.ClientSession, None)  # validation never touches the network
    return {
        "aliyun": AliyunProvider(AliyunSettings(), session),
        "liblibai": LiblibProvider(LiblibSettings(), session),
    }


def check(
    catalog: Catalog, providers: dict[str, Provider], model: str, parameters: dict[str, Any]
) -> dict[str, Any]:
    spec = catalog.get(model)
    assert spec is not None
    return providers[spec.provider].validate(spec, parameters)


def rejected(catalog: Catalog, providers: dict[str, Provider], model: str, parameters: dict[str, Any]) -> str:
    with pytest.raises(InvalidRequest) as caught:
        check(catalog, providers, model, parameters)
    assert caught.value.category is ErrorCategory.INVALID_REQUEST
    return caught.value.message


# --- the original service's requests ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(EXPECTED))
def test_original_requests_validate(catalog: Catalog, providers: dict[str, Provider], model: str) -> None:
    request = Request.model_validate_json(seed_body(model))
    normalised, described = EXPECTED[model]
    assert request.model == model
    spec = catalog.get(request.model)
    assert spec is not None and spec.provider == request.provider
    provider = providers[spec.provider]
    params = provider.validate(spec, request.parameters)
    assert params == normalised
    assert json.loads(json.dumps(params)) == params  # stored in MongoDB as is
    assert provider.validate(spec, params) == params  # validating the normalised form changes nothing
    assert provider.describe(spec, params) == described


def test_wanx_submit_body(catalog: Catalog, providers: dict[str, Provider]) -> None:
    spec = catalog.get("wanx2.1-t2i-turbo")
    assert spec is not None
    params = check(catalog, providers, spec.name, {"prompt": "cat", "seed": 7, "watermark": False})
    assert request_body(spec, params) == {
        "model": "wanx2.1-t2i-turbo",
        "input": {"prompt": "cat"},
        "parameters": {"size": "1024*1024", "n": 1, "seed": 7, "watermark": False},
    }


def test_liblib_routes(catalog: Catalog, providers: dict[str, Provider]) -> None:
    custom = catalog.get("liblib-custom")
    assert custom is not None
    f1 = check(catalog, providers, "liblib-custom", json.loads(seed_body("liblib-custom"))["parameters"])
    assert route(custom, f1) == ("/api/generate/webui/text2img", "6f7c4652458d4802969f8d089cf5b91f")
    f1_i2i = check(
        catalog,
        providers,
        "liblib-custom",
        {"baseModelType": "f1", "prompt": "x", "sourceImage": "https://a/b.png"},
    )
    assert f1_i2i["generateParams"]["checkPointId"] == OFFICIAL_F1_CHECKPOINT
    assert route(custom, f1_i2i) == ("/api/generate/webui/img2img", "63b72710c9574457ba303d9d9b8df8bd")
    for base in ("sd", "xl", "sd15", "sdxl", "SDXL"):
        sd = check(
            catalog, providers, "liblib-custom", {"baseModelType": base, "checkPointId": "c", "prompt": "x"}
        )
        assert route(custom, sd) == ("/api/generate/webui/text2img", "e10adc3949ba59abbe56e057f20f883e")
        sd_i2i = check(
            catalog,
            providers,
            "liblib-custom",
            {
                "baseModelType": base,
                "prompt": "x",
                "generateParams": {"checkPointId": "c", "sourceImage": "https://a"},
            },
        )
        assert route(custom, sd_i2i) == ("/api/generate/webui/img2img", "9c7d531dc75f476aa833b3d452b8f7ad")


# --- defaults --------------------------------------------------------------------------------------------------


def test_dashscope_defaults_to_one_image(catalog: Catalog, providers: dict[str, Provider]) -> None:
    # the API's own default is n=4 (four times the cost): the catalog's n=1 applies
    assert check(catalog, providers, "wanx2.1-t2i-plus", {"prompt": "cat"}) == {
        "prompt": "cat",
        "size": "1024*1024",
        "n": 1,
    }
    assert check(catalog, providers, "wanx2.1-t2i-plus", {"prompt": "cat", "n": 3})["n"] == 3


def test_star3_defaults(catalog: Catalog, providers: dict[str, Provider]) -> None:
    params = check(catalog, providers, "star-3-alpha-t2i", {"prompt": "cat"})
    assert params == {
        "generateParams": {"prompt": "cat", "aspectRatio": "square", "imgCount": 1, "steps": 30}
    }


def test_imageedit(catalog: Catalog, providers: dict[str, Provider]) -> None:
    spec = catalog.get("wanx2.1-imageedit")
    assert spec is not None and spec.endpoint == "/services/aigc/image2image/image-synthesis"
    params = check(
        catalog,
        providers,
        spec.name,
        {"function": "expand", "prompt": "wider", "base_image_url": "https://a/b.png", "top_scale": 1.5},
    )
    assert request_body(spec, params) == {
        "model": "wanx2.1-imageedit",
        "input": {"function": "expand", "prompt": "wider", "base_image_url": "https://a/b.png"},
        "parameters": {"n": 1, "top_scale": 1.5},
    }
    message = rejected(
        catalog,
        providers,
        spec.name,
        {"function": "description_edit_with_mask", "prompt": "x", "base_image_url": "https://a/b.png"},
    )
    assert "mask_image_url is required" in message


def test_liblib_unknown_keys_inside_generate_params_pass_through(
    catalog: Catalog, providers: dict[str, Provider]
) -> None:
    params = check(
        catalog,
        providers,
        "liblib-custom",
        {"baseModelType": "f1", "prompt": "x", "generateParams": {"futureField": {"a": 1}}},
    )
    assert params["generateParams"]["futureField"] == {"a": 1}


def test_catalog_limits_apply(providers: dict[str, Provider]) -> None:
    entry: dict[str, Any] = {
        "name": "wanx-small",
        "provider": "aliyun",
        "kind": "text-to-image",
        "endpoint": "/services/aigc/text2image/image-synthesis",
        "defaults": {"n": 1},
    }
    spec = ModelSpec.model_validate(
        {**entry, "accepts": {"prompt": 10, "n": [1, 2], "size": {"sides": [512, 1024]}}}
    )
    # A catalog written for imaged 0.1 says the same with `limits`.
    earlier = {"side_min": 512, "side_max": 1024, "n_max": 2, "prompt_max": 10}
    assert ModelSpec.model_validate({**entry, "limits": earlier}) == spec
    provider = providers["aliyun"]
    assert provider.validate(spec, {"prompt": "0123456789", "size": "1024*512", "n": 2})["n"] == 2
    for params, field in (
        ({"prompt": "x", "size": "1025*512"}, "parameters.size: each side must be 512..1024 (got 1025*512)"),
        ({"prompt": "x", "n": 3}, "parameters.n: must be 1..2 (got 3)"),
        ({"prompt": "01234567890"}, "parameters.prompt: must be at most 10 characters (got 11 characters)"),
    ):
        with pytest.raises(InvalidRequest) as caught:
            provider.validate(spec, params)
        assert caught.value.message == field


# --- errors name the field -------------------------------------------------------------------------------------

BAD: list[tuple[str, dict[str, Any], str]] = [
    # DashScope
    ("wanx2.1-t2i-turbo", {"size": "1024*1024"}, "parameters.prompt: is required"),
    ("wanx2.1-t2i-turbo", {"prompt": "   "}, "parameters.prompt: must not be empty"),
    ("wanx2.1-t2i-turbo", {"prompt": "x" * 501}, "parameters.prompt: must be at most 500 characters"),
    ("wanx2.1-t2i-turbo", {"prompt": 42}, "parameters.prompt: must be a string (got 42)"),
    (
        "wanx2.1-t2i-turbo",
        {"prompt": "x", "negative_prompt": "y" * 501},
        "parameters.negative_prompt: must be at",
    ),
    (
        "wanx2.1-t2i-turbo",
        {"prompt": "x", "size": "2000*1024"},
        "parameters.size: each side must be 512..1440 (got 2000*1024)",
    ),
    (
        "wanx2.1-t2i-turbo",
        {"prompt": "x", "size": "511*1024"},
        "parameters.size: each side must be 512..1440",
    ),
    ("wanx2.1-t2i-turbo", {"prompt": "x", "size": "1024x1024"}, "parameters.size: must be 'W*H' with '*'"),
    ("wanx2.1-t2i-turbo", {"prompt": "x", "size": "big"}, "parameters.size: must be 'W*H'"),
    ("wanx2.1-t2i-turbo", {"prompt": "x", "n": 0}, "parameters.n: must be 1..4 (got 0)"),
    ("wanx2.1-t2i-turbo", {"prompt": "x", "n": 5}, "parameters.n: must be 1..4 (got 5)"),
    ("wanx2.1-t2i-turbo", {"prompt": "x", "n": "2"}, 'parameters.n: must be an integer (got "2")'),
    ("wanx2.1-t2i-turbo", {"prompt": "x", "n": 1.5}, "parameters.n: must be an integer"),
    ("wanx2.1-t2i-turbo", {"prompt": "x", "seed": -1}, "parameters.seed: must be 0..2147483647 (got -1)"),
    ("wanx2.1-t2i-turbo", {"prompt": "x", "seed": 2147483648}, "parameters.seed: must be 0..2147483647"),
    (
        "wanx2.1-t2i-turbo",
        {"prompt": "x", "prompt_extend": "yes"},
        "parameters.prompt_extend: must be true or",
    ),
    (
        "wanx2.1-t2i-turbo",
        {"prompt": "x", "watermark": 1},
        "parameters.watermark: must be true or false (got 1)",
    ),
    ("wanx2.1-t2i-turbo", {"prompt": "x", "style": "<auto>"}, "parameters.style: is not a known parameter"),
    ("wanx2.1-imageedit", {"prompt": "x", "base_image_url": "https://a"}, "parameters.function: is required"),
    (
        "wanx2.1-imageedit",
        {"function": "paint", "prompt": "x", "base_image_url": "https://a"},
        "parameters.function: must be one of",
    ),
    (
        "wanx2.1-imageedit",
        {"function": "expand", "prompt": "x", "base_image_url": "file:///etc/passwd"},
        "parameters.base_image_url: must be an http(s)",
    ),
    (
        "wanx2.1-imageedit",
        {"function": "expand", "prompt": "x", "base_image_url": "https://a", "strength": 2},
        "parameters.strength: must be 0.0..1.0 (got 2)",
    ),
    # Star-3
    ("star-3-alpha-t2i", {"aspectRatio": "square"}, "parameters.prompt: is required"),
    ("star-3-alpha-t2i", {"prompt": "x" * 2001}, "parameters.prompt: must be at most 2000 characters"),
    ("star-3-alpha-t2i", {"prompt": "x", "aspectRatio": "wide"}, "parameters.aspectRatio: must be one of"),
    ("star-3-alpha-t2i", {"prompt": "x", "imgCount": 5}, "parameters.imgCount: must be 1..4 (got 5)"),
    ("star-3-alpha-t2i", {"prompt": "x", "steps": 0}, "parameters.steps: must be 1..60 (got 0)"),
    ("star-3-alpha-t2i", {"prompt": "x", "steps": "30"}, "parameters.steps: must be an integer"),
    (
        "star-3-alpha-t2i",
        {"prompt": "x", "width": 100, "height": 1024},
        "parameters.width: must be 512..2048",
    ),
    ("star-3-alpha-t2i", {"prompt": "x", "width": 1024}, "parameters: give both width and height"),
    (
        "star-3-alpha-t2i",
        {"prompt": "x", "aspectRatio": "square", "imageSize": {"width": 1024, "height": 1024}},
        "give either aspectRatio or imageSize",
    ),
    (
        "star-3-alpha-t2i",
        {"prompt": "x", "generateParams": {"imageSize": {"width": 1024, "height": 4096}}},
        "parameters.generateParams.imageSize.height: must be 512..2048 (got 4096)",
    ),
    (
        "star-3-alpha-t2i",
        {"prompt": "x", "controlnet": {"controlType": "edge", "controlImage": "https://a"}},
        "parameters.controlnet.controlType: must be one of",
    ),
    (
        "star-3-alpha-t2i",
        {"prompt": "x", "sourceImage": "https://a"},
        "parameters.sourceImage: is not a known",
    ),
    (
        "star-3-alpha-t2i",
        {"prompt": "x", "generateParams": []},
        "parameters.generateParams: must be an object",
    ),
    ("star-3-alpha-i2i", {"prompt": "x"}, "parameters.sourceImage: is required"),
    (
        "star-3-alpha-i2i",
        {"prompt": "x", "sourceImage": "/etc/passwd"},
        "parameters.sourceImage: must be a public",
    ),
    (
        "star-3-alpha-t2i",
        {"prompt": "x", "steps": 20, "generateParams": {"steps": 30}},
        "parameters.steps: also given inside generateParams",
    ),
    # custom
    ("liblib-custom", {"baseModelType": "sd", "prompt": "x"}, "parameters.checkPointId: is required"),
    ("liblib-custom", {"baseModelType": "f2", "prompt": "x"}, "parameters.baseModelType: must be one of"),
    ("liblib-custom", {"baseModelType": "f1"}, "parameters.prompt: is required"),
    (
        "liblib-custom",
        {"baseModelType": "f1", "prompt": "x", "foo": 1},
        "parameters.foo: is not a known parameter",
    ),
    (
        "liblib-custom",
        {"baseModelType": "f1", "prompt": "x", "steps": 61},
        "parameters.steps: must be 1..60 (got 61)",
    ),
    (
        "liblib-custom",
        {"baseModelType": "f1", "prompt": "x", "additionalNetwork": [{"modelId": "a"}] * 6},
        "parameters.additionalNetwork: must have at most 5 items",
    ),
]


@pytest.mark.parametrize(("model", "parameters", "expected"), BAD, ids=[expected for _, _, expected in BAD])
def test_bad_field_is_named(
    catalog: Catalog, providers: dict[str, Provider], model: str, parameters: dict[str, Any], expected: str
) -> None:
    message = rejected(catalog, providers, model, parameters)
    assert expected in message


# liblib-custom (F.1, with a prompt), one bad field inside generateParams: the message names it by its path.
BAD_GENERATE_PARAMS: list[tuple[dict[str, Any], str]] = [
    ({"cfgScale": 20}, "cfgScale: must be 1.0..15.0 (got 20)"),
    ({"width": 2048, "height": 1024}, "width: must be 128..1536 (got 2048)"),
    ({"clipSkip": 13}, "clipSkip: must be 1..12"),
    ({"seed": 10000000000}, "seed: must be -1..9999999999"),
    ({"randnSource": True}, "randnSource: must be an integer"),
    ({"mode": 1}, "mode: must be one of 0, 4"),
    ({"imgCount": 0}, "imgCount: must be 1..4"),
    (
        {"additionalNetwork": [{"modelId": "a", "weight": 5}]},
        "additionalNetwork[0].weight: must be -4.0..4.0 (got 5)",
    ),
]


@pytest.mark.parametrize(
    ("generate_params", "expected"),
    BAD_GENERATE_PARAMS,
    ids=[expected for _, expected in BAD_GENERATE_PARAMS],
)
def test_bad_field_inside_generate_params_is_named_by_its_path(
    catalog: Catalog, providers: dict[str, Provider], generate_params: dict[str, Any], expected: str
) -> None:
    parameters = {"baseModelType": "f1", "prompt": "x", "generateParams": generate_params}
    message = rejected(catalog, providers, "liblib-custom", parameters)
    assert f"parameters.generateParams.{expected}" in message


def test_every_bad_field_is_reported_at_once(catalog: Catalog, providers: dict[str, Provider]) -> None:
    message = rejected(
        catalog, providers, "wanx2.1-t2i-turbo", {"prompt": "x", "n": 9, "seed": -5, "extra": 1}
    )
    assert "parameters.n:" in message and "parameters.seed:" in message and "parameters.extra:" in message
    message = rejected(catalog, providers, "star-3-alpha-t2i", {"prompt": "x", "foo": 1, "imgCount": 9})
    assert "parameters.foo:" in message and "parameters.imgCount:" in message


def test_unknown_dashscope_key_lists_the_known_ones(catalog: Catalog, providers: dict[str, Provider]) -> None:
    message = rejected(catalog, providers, "wanx2.1-t2i-turbo", {"prompt": "x", "steps": 30})
    assert message == (
        "parameters.steps: is not a known parameter "
        "(expected one of: prompt, n, seed, watermark, negative_prompt, size, prompt_extend)"
    )


def test_prompt_at_the_limit_is_accepted(catalog: Catalog, providers: dict[str, Provider]) -> None:
    # longer prompts are rejected rather than silently truncated by the provider (500 characters for wan2.1)
    assert check(catalog, providers, "wanx2.1-t2i-turbo", {"prompt": "猫" * 500})["prompt"] == "猫" * 500


# --- credentials -----------------------------------------------------------------------------------------------


def test_credentials_from_settings() -> None:
    session = cast(aiohttp.ClientSession, None)
    assert AliyunProvider(AliyunSettings(), session).credentials() == []
    assert LiblibProvider(LiblibSettings(), session).credentials() == []
    only_access = LiblibSettings.model_validate({"access_key": SecretStr("ak")})
    assert LiblibProvider(only_access, session).credentials() == []

    aliyun_settings = AliyunSettings.model_validate(
        {
            "api_key": SecretStr("sk-secret-key"),
            "base_url": "https://dashscope-intl.aliyuncs.com/api/v1/",
            "max_in_flight": 3,
        }
    )
    liblib_settings = LiblibSettings.model_validate(
        {"access_key": SecretStr("access-key"), "secret_key": SecretStr("secret-key"), "max_in_flight": 4}
    )
    (aliyun,) = AliyunProvider(aliyun_settings, session).credentials()
    assert aliyun.name == "aliyun-1" and "sk-secret" not in repr(aliyun)
    assert aliyun.key.get_secret_value() == "sk-secret-key" and aliyun.secret is None
    assert aliyun.base_url == "https://dashscope-intl.aliyuncs.com/api/v1"
    assert aliyun.max_in_flight == 3
    (liblib,) = LiblibProvider(liblib_settings, session).credentials()
    assert liblib.name == "liblibai-1" and "secret-key" not in repr(liblib)
    assert liblib.secret is not None and liblib.secret.get_secret_value() == "secret-key"
    assert liblib.base_url == "https://openapi.liblibai.cloud" and liblib.max_in_flight == 4


def test_star3_image_to_image_needs_an_output_size(catalog: Catalog, providers: dict[str, Provider]) -> None:
    message = rejected(
        catalog,
        providers,
        "star-3-alpha-i2i",
        {"prompt": "a cat", "sourceImage": "https://example.com/a.png"},
    )
    assert "aspectRatio" in message and "width and height" in message
