// A stand-in for the tutorial's C# Messenger, written for tcpchat's tests from the
// behaviour described in shared/SEED.md: it asks for a name, writes "name:NAME" in
// one write with no terminator, takes "still connected after about 10 ms" as
// acceptance, then sends each non-empty typed line as one write, without a
// terminator, until "quit" or "exit". It never reads from the socket. The only change
// is that the port may be given as the first argument.
using System;
using System.Net.Sockets;
using System.Text;
using System.Threading;

class Messenger
{
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
        Console.Write("Enter a name to use: ");
        string name = Console.ReadLine();

        TcpClient client = new TcpClient();
        client.Connect("localhost", port);
        NetworkStream stream = client.GetStream();
        byte[] hello = Encoding.UTF8.GetBytes("name:" + name);
        stream.Write(hello, 0, hello.Length);

        Thread.Sleep(10);
        if (IsDisconnected(client))
        {
            Console.WriteLine("The server rejected us; \"{0}\" is probably in use.", name);
            return 1;
        }

        while (true)
        {
            Console.Write("{0}> ", name);
            string line = Console.ReadLine();
            if (line == null)
            {
                break;
            }
            string word = line.ToLowerInvariant();
            if (word == "quit" || word == "exit")
            {
                break;
            }
            if (line != string.Empty)
            {
                byte[] message = Encoding.UTF8.GetBytes(line);
                stream.Write(message, 0, message.Length);
            }
            Thread.Sleep(10);
            if (IsDisconnected(client))
            {
                Console.WriteLine("The server has disconnected from us.");
                return 1;
            }
        }
        client.Close();
        return 0;
    }
}
