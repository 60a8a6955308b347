// A stand-in for the tutorial's C# Viewer, written for tcpchat's tests from the
// behaviour described in shared/SEED.md: one write of "viewer" with no terminator,
// a "still connected?" check about 10 ms later, then every read printed as one line.
// The only change is that the port may be given as the first argument.
using System;
using System.Net.Sockets;
using System.Text;
using System.Threading;

class Viewer
{
    // Readable with nothing to read means the peer closed (FIN or reset).
    static bool IsDisconnected(TcpClient client)
    {
        try
        {
            Socket socket = client.Client;
            return socket.Poll(10 * 1000, SelectMode.SelectRead) && socket.Available == 0;
        }
        catch (SocketException)
        {
            return true;
        }
    }

    static int Main(string[] args)
    {
        int port = args.Length > 0 ? int.Parse(args[0]) : 6000;
        TcpClient client = new TcpClient();
        client.Connect("localhost", port);
        NetworkStream stream = client.GetStream();
        byte[] hello = Encoding.UTF8.GetBytes("viewer");
        stream.Write(hello, 0, hello.Length);

        Thread.Sleep(10);
        if (IsDisconnected(client))
        {
            Console.WriteLine("The server would not take us as a viewer.");
            return 1;
        }

        byte[] buffer = new byte[2048];
        while (true)
        {
            if (client.Available > 0)
            {
                int read = stream.Read(buffer, 0, buffer.Length);
                Console.WriteLine(Encoding.UTF8.GetString(buffer, 0, read));
            }
            else if (IsDisconnected(client))
            {
                Console.WriteLine("The server has gone away.");
                return 0;
            }
            Thread.Sleep(10);
        }
    }
}
