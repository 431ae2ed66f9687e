"""Operations: what the people running dcs-notifier look at (``dcs-notifier status``, metrics)."""
