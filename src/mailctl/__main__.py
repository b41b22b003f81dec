from mailctl.cli import main


def sendmail() -> None:
    """The `mailctl-sendmail` program: `mailctl sendmail ARGS...`, for whatever runs
    /usr/sbin/sendmail (link it there, or point cron's MAILER at it; docs/outbox.md)."""
    import sys

    main(["sendmail", *sys.argv[1:]])


if __name__ == "__main__":  # pragma: no cover
    main()
