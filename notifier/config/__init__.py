"""The configuration file, from YAML text to a validated :class:`~notifier.config.models.Config`.

- ``load``: read the file (a key given twice is refused), then the steps below, then one error for all;
- ``env``: ``${VAR}`` interpolation, CLOUD_SDK_AK/SK, and credentials still missing after both;
- ``normalise``: the one-project short form rewritten into the fleet form, recording where keys were;
- ``models``: what a valid config is (pydantic), with its bounds and cross-checks;
- ``messages``: pydantic's errors in the words of the file (unknown keys with a suggestion);
- ``source``: where the file wrote each key, and the problem lines every error is made of;
- ``redis_url``: the three forms of ``redis.url``;
- ``display``: the config as ``check-config`` shows it, secrets masked.
"""
