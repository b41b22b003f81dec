from mailctl.cli import main


def sendmail() -> None:
    """The `mailctl-sendmail` program: `mailctl sendmail ARGS...`, for whatever runs
    /usr/sbin/sendmail (link it there, or point cron's MAILER at it; docs/outbox.md)."""
    import sys

    from mailctl.cli import _before_exit

    try:
        main(["sendmail", *sys.argv[1:]])
    finally:  # the program itself, as `mailctl` is: the same quick exit
        _before_exit()


if __name__ == "__main__":  # pragma: no cover
    main()
