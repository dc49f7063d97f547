"""Former home of ``silod``'s main, kept so launchers written before the move keep working
(``python -m silobox.engine.daemon``, a ``silod`` script naming ``silobox.engine.daemon:main``).

silod's composition root is :mod:`silobox.daemon`; nothing in silobox imports this module.
"""


def main(argv: list[str] | None = None) -> None:
    from silobox.daemon.main import main as silod
    silod(argv)


if __name__ == "__main__":
    main()
